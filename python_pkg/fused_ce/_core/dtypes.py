"""Dtypes in torch's words: the ScalarType names its messages use, and the dtype errors that torch's own
arithmetic raises for the less common dtypes (unsigned 16-64 bit, float8, bool, complex)."""

import torch

# Floating dtypes that the kernels compute in (the loss' and logits' dtypes).
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.uint16: "UInt16",
    torch.uint32: "UInt32",
    torch.uint64: "UInt64",
    torch.bool: "Bool",
    torch.qint8: "QInt8",
    torch.quint8: "QUInt8",
    torch.qint32: "QInt32",
    torch.quint4x2: "QUInt4x2",
    torch.quint2x4: "QUInt2x4",
}

# Dtypes whose subtraction works on every device; torch's BCE subtracts its target and pos_weight.
_SUBTRACTABLE = KERNEL_DTYPES + (
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
)


def dtype_name(dtype):
    """c10's ScalarType name: 'Float', 'ComplexFloat', 'UInt16', 'Float8_e4m3fn'."""
    name = _NAMES.get(dtype)
    if name is None:
        name = str(dtype).replace("torch.", "")
        name = name[:1].upper() + name[1:]  # float8_e4m3fn -> Float8_e4m3fn, as c10 spells the float8 types
    return name


def check_subtractable(t, expression):
    """Raises what torch raises for `expression(t)` where t's dtype has no subtraction (bool: the '-' operator
    error; unsigned 16-64 bit and float8: the kernel's NotImplementedError): evaluated on a one-element
    tensor of t's dtype and device, so the error (and its wording on that device) is torch's own."""
    if t is not None and t.dtype not in _SUBTRACTABLE:
        if torch.compiler.is_compiling():
            # Traced, the stand-in's error would be dynamo's report of this subtraction; the public API
            # replaces any refusal by torch's own loss while tracing (functional.py), whose error it reports.
            raise RuntimeError(f"fused_ce: no subtraction in {dtype_name(t.dtype)}")
        expression(torch.zeros(1, dtype=t.dtype, device=t.device))


def _can_cast(src, dst):
    """torch.can_cast, in Python: torch.compile cannot trace torch.can_cast (it returns no tensor)."""
    if src.is_complex and not dst.is_complex:
        return False
    if src.is_floating_point and not (dst.is_floating_point or dst.is_complex):
        return False
    return src == torch.bool or dst != torch.bool


def check_castable(result, desired):
    """torch's error for an in-place op whose result type cannot be written to a tensor of `desired` dtype."""
    if result != desired and not _can_cast(result, desired):
        raise RuntimeError(
            f"result type {dtype_name(result)} can't be cast to the desired output type {dtype_name(desired)}"
        )
