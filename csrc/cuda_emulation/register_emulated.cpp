// The emulated CUDA extension (fused_ce._C_emulated_cuda): the CUDA glue and kernels of csrc/cuda,
// registered for CPU tensors in a library of their own, `fused_ce_emulated_cuda`, with the same schemas
// as `fused_ce`. The real CPU kernels are untouched; fused_ce.testing.emulated_cuda() routes the public
// API to these ops.
#include <Python.h>
#include <torch/library.h>

#include "cuda/linear_ce_cuda.h"
#include "cuda/ops_cuda.h"
#include "cuda/partial_stats_cuda.h"
#include "linear_ce_schema.h"
#include "op_schemas.h"
#include "partial_stats_schema.h"

PyMODINIT_FUNC PyInit__C_emulated_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emulated_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fused_ce_emulated_cuda, m) {
  fused_ce::define_ops(m);
  fused_ce::define_linear_ce_ops(m);
  fused_ce::define_partial_stats_ops(m);
}

TORCH_LIBRARY_IMPL(fused_ce_emulated_cuda, CPU, m) {
  fused_ce::cuda::register_impls(m);
  fused_ce::cuda::register_linear_ce_impls(m);
  fused_ce::cuda::register_partial_stats_impls(m);
}
