"""Error messages written once. Most are torch's own, word for word, so that code matching torch's errors
matches fused_ce's: every path that makes the same check (the public API's validation, the fake kernels, the
vocabulary-parallel checks, the vmap rules) takes its text from here. The TorchScript path (script.py) keeps
literal copies: TorchScript compiles only what it can see, and these helpers are plain Python."""

from .dtypes import dtype_name


def invalid_reduction_code(code):
    return f"fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got {code}"  # csrc/op_common.h's text


def negative_softcap(who, softcap):
    return f"{who}: softcap must be >= 0 (0 turns it off), got {softcap}"


def label_smoothing_range(label_smoothing):
    return f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}"  # C++ stream format


def weight_size(num_classes, shape, prefix=""):
    return (
        f"{prefix}weight tensor should be defined either for all {num_classes} classes or no classes but got "
        f"weight tensor of shape: {list(shape)}"
    )


def weight_dtype(logits_dtype, weight_dtype):
    return f"expected scalar type {dtype_name(logits_dtype)} but found {dtype_name(weight_dtype)}"


def target_dtype(dtype):
    return f"expected target dtype to be Long or Byte, but got {dtype_name(dtype)}"


def target_size(expected, got):
    return f"Expected target size {list(expected)}, got {list(got)}"


def batch_size_mismatch(input_rows, target_rows):
    return f"Expected input batch_size ({input_rows}) to match target batch_size ({target_rows})."


MULTI_TARGET = "0D or 1D target tensor expected, multi-target not supported"


def target_out_of_bounds(index):
    return f"Target {index} is out of bounds."


def bce_target_size(target_size, input_size):
    """torch's functional API prints torch.Size arguments (Target size (torch.Size([2, 3])) must be ...); the
    ops' C++ glue, and so the fake kernels, print lists."""
    return f"Target size ({target_size}) must be the same as input size ({input_size})"
