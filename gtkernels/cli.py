"""``gtkernels train|evaluate|predict`` (also ``python -m gtkernels ...``)."""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: gtkernels {train,evaluate,predict} ...

  train     train a Geometric Transformer on a QM9 target   (gtkernels train --help)
  evaluate  test MAE, parity plot and learning curve of a run (gtkernels evaluate RUN_DIR)
  predict   property of new molecules from an XYZ file       (gtkernels predict RUN_DIR FILE.xyz)
"""


def main(argv: Optional[List[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
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
    print(f"gtkernels: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)
