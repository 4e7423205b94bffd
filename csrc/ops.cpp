// The op schemas of fused_ce, defined once for every backend. CPU impls are in cpu/ops_cpu.cpp and
// CUDA impls in cuda/ops_cuda.cpp; fake (meta) kernels and autograd are registered from Python
// (python_pkg/fused_ce/_ops.py). `reduction` is at::Reduction's value: 0 none, 1 mean, 2 sum.
#include <Python.h>
#include <torch/library.h>

// `from fused_ce import _C` loads this library; the static registrations below do the rest, so the
// module itself is empty (and works with Python's limited API).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fused_ce, m) {
  // Class-index targets. Returns the loss and the per-row log-sum-exp (fp32; fp64 for fp64 logits),
  // the only tensor that backward needs besides the inputs.
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, int reduction) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "int ignore_index, float label_smoothing, int reduction) -> Tensor");
  // Class-probability targets (target has the logits' shape and dtype).
  m.def(
      "cross_entropy_soft_fwd(Tensor logits, Tensor target, Tensor? weight, float label_smoothing, "
      "int reduction) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_soft_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "float label_smoothing, int reduction) -> Tensor");
  m.def(
      "cross_entropy_soft_target_bwd(Tensor grad, Tensor logits, Tensor? weight, Tensor lse, "
      "float label_smoothing, int reduction) -> Tensor");
  // Binary cross-entropy with logits; weight and pos_weight broadcast to the input.
  m.def(
      "bce_with_logits_fwd(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "int reduction) -> Tensor");
  m.def(
      "bce_with_logits_bwd(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, int reduction) -> Tensor");
  m.def(
      "bce_with_logits_target_bwd(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, int reduction) -> Tensor");
}
