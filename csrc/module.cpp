// module.cpp — makes the shared library importable as the Python module gtkernels._C.
// Importing it runs the static TORCH_LIBRARY registrations of ops.cpp (torch.ops.gtkernels_C.*);
// the module itself exposes with_cuda(): whether this build holds the CUDA kernels (csrc/cuda).
#include <Python.h>

namespace {
PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef GTKERNELS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled into this build."},
    {nullptr, nullptr, 0, nullptr},
};
}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "gtkernels compiled kernels: importing registers torch.ops.gtkernels_C.*",
      -1,
      methods,
  };
  return PyModule_Create(&module_def);
}
}
