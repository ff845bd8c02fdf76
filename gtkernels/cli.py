"""``gtkernels train|evaluate|predict`` (also ``python -m gtkernels ...``): the console script.

Exit status: 0 on success, 2 on bad usage (an unknown command or option, an option value that cannot work, a
folder that is no run), 1 on a failure (a damaged checkpoint, an error while running). Ordinary mistakes are
one line on stderr, ``gtkernels CMD: error: ...``, naming the file or option and saying what to do.

:func:`main` is the console entry point (returns the exit status); :func:`run` is the same for Python callers
and returns the command's result (the training summary, the evaluation metrics, the predicted values).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

USAGE = """usage: gtkernels {train,evaluate,predict} ...   (gtkernels --version)

  train     train a Geometric Transformer on a QM9 target, or R-MAT (--model rmat) on FreeSolv,
            solubility or QM9                                (gtkernels train --help)
  evaluate  test MAE / RMSE, parity plot and learning curve   (gtkernels evaluate RUN_DIR)
  predict   property of new molecules: XYZ (geot), SMILES or SDF (rmat)
                                                             (gtkernels predict RUN_DIR FILE)
"""
COMMANDS = ("train", "evaluate", "predict")


def version() -> str:
    """``gtkernels 0.1.0 (torch 2.13.0+cpu, backends reference, cpu)``."""
    import torch
    import gtkernels
    return f"gtkernels {gtkernels.__version__} (torch {torch.__version__}, backends {', '.join(gtkernels.backends())})"


def run(argv: Optional[List[str]] = None):
    """Run ``gtkernels ARGV`` and return what the command returns; raises what it raises (argparse's SystemExit,
    :class:`gtkernels.train.RunError` for ordinary mistakes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"gtkernels: error: give a command\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if argv[0] in ("-V", "--version"):
        print(version())
        return None
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from .train import main as train_main
        return train_main(rest)
    if cmd == "evaluate":
        from .evaluate import main_evaluate
        return main_evaluate(rest)
    if cmd == "predict":
        from .evaluate import main_predict
        return main_predict(rest)
    print(f"gtkernels: error: unknown command {cmd!r}; the commands are {', '.join(COMMANDS)}\n\n{USAGE}",
          file=sys.stderr)
    raise SystemExit(2)


def _setup_logging() -> None:
    """The package's warnings (``logging.getLogger("gtkernels")``) as ``gtkernels: warning: ...`` on stderr."""
    logger = logging.getLogger("gtkernels")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("gtkernels: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point: run ``gtkernels ARGV``; the exit status (0 success, 2 bad usage, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        run(argv)
    except SystemExit as exc:   # argparse (2, or 0 after --help) and commands that exit themselves
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)   # SystemExit("message"): a failure with its reason
        return 1
    except KeyboardInterrupt:
        print("gtkernels: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .train import RunError
        if not isinstance(exc, RunError):
            raise   # a bug: the traceback is what helps (the interpreter then exits with 1)
        if os.environ.get("RANK", "0") == "0":   # under torchrun every process fails alike: say it once
            cmd = argv[0] if argv and argv[0] in COMMANDS else ""
            print(f"gtkernels {cmd}: error: {exc}".replace("  ", " "), file=sys.stderr)
        return exc.exit_code
    return 0
