// module.cpp — makes the shared library importable as the Python module gtkernels._C.
// Importing it runs the static TORCH_LIBRARY registrations (schemas in ops.cpp, each backend's implementations
// at the end of its own file: torch.ops.gtkernels_C.*). The module itself exposes
//   with_cuda(): whether this build holds the CUDA kernels (csrc/cuda/kernels);
//   contract():  the compiled cross-backend facts of contract.h, under the keys of gtkernels.contract.as_dict().
#include <Python.h>

#include "contract.h"

namespace {
PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef GTKERNELS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// Sets d[key] = value (a new reference, released here); false on failure (a Python error is set).
bool set_item(PyObject* d, const char* key, PyObject* value) {
  if (value == nullptr) return false;
  const int rc = PyDict_SetItemString(d, key, value);
  Py_DECREF(value);
  return rc == 0;
}

PyObject* contract(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  const bool ok = set_item(d, "distance_eps", PyFloat_FromDouble(gt::kDistanceEps)) &&
                  set_item(d, "max_mlp_width", PyLong_FromLong(gt::kMaxWidth)) &&
                  set_item(d, "max_mlp_layers", PyLong_FromLong(gt::kMaxLayers)) &&
                  set_item(d, "act_none", PyLong_FromLong(gt::kActNone)) &&
                  set_item(d, "act_relu", PyLong_FromLong(gt::kActRelu)) &&
                  set_item(d, "act_gelu", PyLong_FromLong(gt::kActGelu)) &&
                  set_item(d, "relation_leaky_slope", PyFloat_FromDouble(gt::kLeakySlope)) &&
                  set_item(d, "relation_basis_size", PyLong_FromLong(gt::kBasisSize)) &&
                  set_item(d, "relation_cutoff", PyFloat_FromDouble(gt::kBasisCutoff)) &&
                  set_item(d, "relation_envelope_exponent", PyLong_FromLong(gt::kEnvelopeExponent)) &&
                  set_item(d, "relation_distance_offset", PyFloat_FromDouble(gt::kDistanceOffset)) &&
                  set_item(d, "relation_bond_channels", PyLong_FromLong(gt::kBondChannels)) &&
                  set_item(d, "relation_hop_channels", PyLong_FromLong(gt::kHopChannels)) &&
                  set_item(d, "code_mask_flag_bit", PyLong_FromLong(gt::kCodeMaskFlagBit)) &&
                  set_item(d, "code_bond_type_shift", PyLong_FromLong(gt::kCodeBondTypeShift)) &&
                  set_item(d, "code_bond_types", PyLong_FromLong(gt::kCodeBondTypes)) &&
                  set_item(d, "code_flag_shift", PyLong_FromLong(gt::kCodeFlagShift)) &&
                  set_item(d, "code_hop_shift", PyLong_FromLong(gt::kCodeHopShift)) &&
                  set_item(d, "code_hop_buckets", PyLong_FromLong(gt::kCodeHopBuckets)) &&
                  set_item(d, "code_field_mask", PyLong_FromLong(gt::kCodeFieldMask)) &&
                  set_item(d, "code_limit", PyLong_FromLong(gt::kCodeLimit));
  if (!ok) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True when the CUDA kernels were compiled into this build."},
    {"contract", contract, METH_NOARGS,
     "The compiled cross-backend facts (csrc/contract.h), keyed as gtkernels.contract.as_dict()."},
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
