// The fused_ce op library (schemas in op_schemas.h). CPU impls are in cpu/ops_cpu.cpp and CUDA impls in
// cuda/ops_cuda.cpp; fake (meta) kernels and autograd are registered from Python
// (python_pkg/fused_ce/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "linear_ce_schema.h"
#include "op_schemas.h"
#include "partial_stats_schema.h"

// `from fused_ce import _C` loads this library; the static registrations below do the rest, so the
// module itself is empty (and works with Python's limited API).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fused_ce, m) {
  fused_ce::define_ops(m);
  fused_ce::define_linear_ce_ops(m);
  fused_ce::define_partial_stats_ops(m);
}
