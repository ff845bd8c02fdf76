// module.cpp — makes the shared library importable as the Python module gtkernels._C.
// Importing it runs the static TORCH_LIBRARY registrations of ops.cpp (torch.ops.gtkernels_C.*);
// the module itself exposes nothing.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "gtkernels compiled kernels: importing registers torch.ops.gtkernels_C.*",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
