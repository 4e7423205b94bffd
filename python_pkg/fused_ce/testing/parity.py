"""How fused_ce's results are judged against torch's: the error bound, and the comparison of a fused loss
(values and gradients) with torch's own loss. Shared by the test suite (tests/helpers.py) and the installed
self-check (python -m fused_ce.check), so both apply one rule. A failed comparison raises AssertionError,
also under python -O.

How a result is judged
- The reference is torch's loss evaluated in float64 on the same rounded inputs: low-precision and fp32
  tensors upcast exactly, and the upstream gradient rounded to the loss's dtype first, as fused_ce sees it.
  Up to fp64 rounding it is the exact answer for the inputs the test passes.
- The error of a tensor is max |actual - reference| / max |reference| over the entries where the
  reference is finite: relative to the tensor's own size, so a tensor of zeros has error 1 however small
  its entries are (a mean over many rows), and no absolute floor lets it pass. (Only an all-zero
  reference, where zeros are right, is judged in absolute terms; and an entry may be off by half the
  dtype's subnormal spacing, 3e-8 in fp16.) Non-finite entries must match exactly (NaN where NaN, the
  same infinity), and a reference beyond the dtype's range must be inf.
- The bound on that error is what fused_ce's arithmetic allows:
      rounding * u(result dtype)              each entry rounded once to its dtype
    + compute * u(accumulation dtype) * M     fp32 arithmetic (fp64 for fp64 results) on log-space values
                                              of magnitude M = max(1, largest finite |input|): the saved
                                              log-sum-exp carries up to ulp(lse)/2 into every probability
                                              (docs/differences.md)
    + summation * n * u(fp64)                 the mean and sum reductions add the n per-row values one by
                                              one in fp64 (n: the input's number of elements, at least the
                                              rows; measured: 5.7e-13 on an fp64 mean over 131074 rows)
    + reference * u(fp64)                     the reference's own error: where torch's fp64 formula cancels
                                              it is off by the cancellation times u(fp64) (measured: 17 u
                                              on a BCE gradient of 0.079 made of terms of 0.7, where
                                              fused_ce's was 0.1 u); 32 u(fp64) = 3.6e-15, so
                                              that an fp64 result a few dozen ulps off fails (with
                                              1e3 u, as before issue 27, the whole suite also passed
                                              at 16 u)
  with u = eps/2 the unit roundoff. That bound must stay below MAX_BOUND: it cannot tell a result from
  zeros otherwise. Two cases may go above it, each only where no arithmetic of the dtype could do better:
  - The compute term grows with the result's natural size relative to its own: the same call's result
    at zero logits (uniform predictions), over the result's size. A prediction that matches its target
    to within the logits' resolution has a loss or gradient far below that size, and the LSE's rounding
    (absolute, ulp(lse)/2) is then large relative to it.
  - The bound is at least torch_multiple times torch's own error when it computes in fp32 on the same
    inputs, scaled to u(fp64) for fp64 results: where the inputs make the arithmetic itself the limit
    (terms that cancel: a BCE gradient w * (lw * sigmoid(x) - pw * y) near 0) torch's fp32 error shows
    it. For small inputs (SMALL_INPUT elements) that baseline also holds how much the fp64 result moves
    when one input tensor moves by one fp32 step, for each input in turn: one evaluation's rounding can be
    lucky where terms cancel (measured: of 3000 random 0-dim fp32 BCE calls and 2500 small cross-entropy
    calls, 3 exceeded a bound from the one fp32 run, none with the moves). torch's own bf16/fp16 results
    are no baseline: its CPU kernels round intermediates to the low precision (measured: 1.3e-2 relative
    gradient error in bf16 at 64 x 1000), which would hide a 1% error, while fused_ce accumulates in fp32
    and rounds once.
  Both widenings are computed only for a result that exceeds the bound without them.
"""

import copy
import math
from dataclasses import dataclass

import torch


def _expect(condition, message):
    """assert, but kept under python -O: the self-check must not pass for want of its checks."""
    if not condition:
        raise AssertionError(message)


@dataclass(frozen=True)
class Tol:
    """The parts of the error bound (see the module docstring)."""

    rounding: float = 1.0  # multiples of the unit roundoff of the result's dtype
    # Multiples of the accumulation dtype's unit roundoff, times the input magnitude M. Measured need: 6.2
    # (fp32 gradients at 1269 x 32000 with logits up to 15 are 5.5e-6 off: the LSE, near 25, carries
    # ulp / 2 = 9.5e-7 into every probability).
    compute: float = 8.0
    # The bound is at least this multiple of torch's own error in fp32 (scaled). Measured need: fp64
    # results 5.2 times the scaled error where terms cancel (the fp64 reference has its own rounding error
    # there, of the same size as fused_ce's, and the two use different formulas).
    torch_multiple: float = 8.0
    summation: float = 1.0  # multiples of n * u(fp64), n the number of terms summed by a reduction
    reference: float = 32  # multiples of u(fp64): the fp64 reference's own error (module docstring)


DEFAULT_TOL = Tol()
MAX_BOUND = 0.05
FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def unit_roundoff(dtype):
    return torch.finfo(dtype).eps / 2


def input_magnitude(*tensors):
    """M of the bound: max(1, the largest finite |value| of the floating tensors given)."""
    return max([1.0] + [_largest(t) for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()])


def error_bound(dtype, input_scale=1.0, tol=None, torch_error=None, terms=0, natural=1.0):
    """The largest error (relative to max |reference|) allowed for a result of `dtype`, computed from
    inputs of magnitude input_scale, by sums of up to `terms` values; torch_error: torch's error on the
    same inputs when it computes in fp32; natural: the result's natural size relative to its own."""
    tol = tol or DEFAULT_TOL
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    compute = tol.compute * unit_roundoff(acc) * input_scale
    bound = (
        tol.rounding * unit_roundoff(dtype)
        + compute
        + (tol.summation * terms + tol.reference) * unit_roundoff(torch.float64)
    )
    if bound > MAX_BOUND:
        raise ValueError(f"error bound {bound:.3g} is above {MAX_BOUND}: the check could not tell a result from zeros")
    bound += compute * (max(natural, 1.0) - 1.0)
    if torch_error is not None and math.isfinite(torch_error):
        bound = max(bound, tol.torch_multiple * torch_error * unit_roundoff(acc) / unit_roundoff(torch.float32))
    return bound


def relative_error(actual, expected):
    """(error, problem): the error relative to max |expected| over expected's finite entries, and a text
    when the non-finite entries differ (then the error is inf). `expected` is the float64 reference."""
    a = actual.detach().double()
    e = expected.detach().double()
    _expect(a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}")
    if a.numel() == 0:
        return 0.0, None
    info = torch.finfo(actual.dtype)
    # Below the dtype's smallest normal number the spacing is fixed: rounding there may be off by half a
    # subnormal step (fp16 gradients of a mean over 10^5 rows are subnormal), absolutely.
    subnormal_slack = info.tiny * info.eps / 2
    diff = a - e
    scale = e.abs().max().item()
    if torch.isfinite(diff).all() and scale <= info.max:  # the common case, in few passes over large tensors
        worst = max(diff.abs_().max().item() - subnormal_slack, 0.0)
    else:
        finite = torch.isfinite(e)
        beyond = finite & (e.abs() > info.max)
        if beyond.any():  # the exact value rounds to inf where it lies beyond the dtype's range
            e = torch.where(beyond, e.to(actual.dtype).double(), e)
            finite = torch.isfinite(e)
        bad = (a.isnan() != e.isnan()) | (torch.isinf(e) & (a != e)) | (torch.isinf(a) & (a != e))
        if bad.any():
            i = tuple(bad.nonzero()[0].tolist())
            return (
                math.inf,
                f"non-finite entries differ ({int(bad.sum())} of {bad.numel()}), first at {i}: "
                f"got {a[i].item()}, expected {e[i].item()}",
            )
        if not finite.any():
            return 0.0, None
        worst = max((a - e).abs().masked_fill(~finite, 0).max().item() - subnormal_slack, 0.0)
        scale = e[finite].abs().max().item()
    # An all-zero reference (one class, say, where the terms cancel) is judged in absolute terms: zeros
    # are the right answer there, and the cancelling terms are of order 1.
    return worst / (scale or 1.0), None


def assert_close(
    actual, expected, dtype=None, tol=None, msg="", input_scale=1.0, torch_error=None, terms=0, natural=1.0
):
    """Asserts relative_error(actual, expected) <= error_bound(...) for a result of `dtype` (default
    actual's dtype). `expected` should be the float64 reference."""
    dtype = dtype or actual.dtype
    _expect(actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    err, problem = relative_error(actual, expected)
    _expect(problem is None, f"{msg}: {problem}")
    bound = error_bound(dtype, input_scale, tol, torch_error, terms, natural)
    if err > bound:
        a, e = actual.detach().double(), expected.detach().double()
        finite = torch.isfinite(e)
        flat = ((a - e).abs().masked_fill(~finite, -1)).reshape(-1).argmax().item()
        where = (
            f"worst entry (flat index {flat}): got {a.reshape(-1)[flat].item():.9g}, "
            f"expected {e.reshape(-1)[flat].item():.9g}; max |expected| {e[finite].abs().max().item():.3g}"
        )
        baseline = "" if torch_error is None else f", torch's own error {torch_error:.3g}"
        raise AssertionError(
            f"{msg}: error {err:.3g} relative to the tensor's size exceeds the bound {bound:.3g} "
            f"({dtype}, input magnitude {input_scale:.3g}, natural size {natural:.3g}{baseline}); "
            f"{where}"
        )
    return err


def assert_loss_of_no_rows(out, reduction):
    """The loss over an empty batch or only ignored rows, as torch: mean is 0/0 = NaN, sum is 0, and
    'none' holds zeros (or nothing)."""
    if reduction == "mean":
        _expect(out.isnan(), f"mean over no rows must be NaN, got {out}")
    else:
        _expect((out == 0).all(), f"{reduction} over no rows must be 0, got {out}")


def random_grad_output(out, seed=1234):
    """A non-uniform upstream gradient (in [0.5, 1.5)) of out's shape, so the backward cannot assume 1."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5).to(out.device)


# Up to this many input elements, one entry whose terms cancel can be a result's largest: there the
# baseline also holds the result's sensitivity to each input (module docstring).
SMALL_INPUT = 256


def compare_with_torch(
    ours_fn, torch_fn, args, grad_args=(), dtype=None, kwargs=None, grad_output=None, expected_dtype=None, tol=None
):
    """Runs ours_fn(*args, **kwargs) and asserts that its value and its gradients w.r.t. args[i] for i in
    grad_args match torch_fn's float64 result on the same inputs within error_bound (module docstring).
    `args` may be non-contiguous views (passed as they are, to exercise the kernels' strided paths);
    torch_fn may be a module (a float64 copy of it gives the reference).

    dtype: unused, kept for callers that name the inputs' dtype (each result is judged by its own dtype).
    grad_output: None for a random non-uniform upstream gradient, or a tensor (rounded to the loss's
    dtype, for fused_ce and the reference alike). expected_dtype: the loss's dtype (default: what torch
    gives for the same inputs). Returns (ours_out, ours_grads) for further checks.
    """
    kwargs = kwargs or {}
    ours_args = [
        a.detach().requires_grad_(i in grad_args) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
    ]
    out = ours_fn(*ours_args, **kwargs)
    go = None
    grads = []
    if grad_args:
        go = (random_grad_output(out) if grad_output is None else grad_output).to(out.device, out.dtype)
        leaves = [ours_args[i] for i in grad_args]
        grads = torch.autograd.grad(out, leaves, go, allow_unused=True)
        for i, g, leaf in zip(grad_args, grads, leaves):
            if g is not None:
                _expect(
                    g.dtype == leaf.dtype and g.shape == leaf.shape,
                    f"gradient of argument {i}: {g.dtype} {tuple(g.shape)}",
                )
    ref, ref_grads = _torch_result(torch_fn, args, kwargs, grad_args, go, torch.float64)
    float_dtypes = {t.dtype for t in (*args, *kwargs.values()) if _is_float(t)}
    # torch's losses keep a single input dtype; mixed ones are promoted its own way: ask torch
    native_dtype = (
        next(iter(float_dtypes))
        if len(float_dtypes) == 1 and not isinstance(torch_fn, torch.nn.Module)
        else _torch_result(torch_fn, args, kwargs, (), go, None)[0].dtype
    )
    _expect(out.dtype == (expected_dtype or native_dtype), f"output dtype {out.dtype}, torch gives {native_dtype}")
    _expect(out.shape == ref.shape, f"output shape {tuple(out.shape)}, torch gives {tuple(ref.shape)}")
    _expect(out.device == ref.device, f"output device {out.device}, torch gives {ref.device}")
    scale = input_magnitude(*args, *kwargs.values())
    results = [("loss value", out, ref)]
    for i, g, rg in zip(grad_args, grads, ref_grads):
        _expect((g is None) == (rg is None), f"gradient of argument {i}: {g} vs torch {rg}")
        results.append((f"gradient w.r.t. argument {i}", g, rg))
    # The baselines and the natural size only ever widen the bound: they are computed only for the
    # results that exceed it without them.
    wider = {}
    for k, (what, actual, expected) in enumerate(results):
        if actual is None:
            continue
        err, problem = relative_error(actual, expected)
        _expect(problem is None, f"{what}: {problem}")
        if err > error_bound(actual.dtype, scale, tol, terms=args[0].numel()):
            wider[k] = (what, actual, expected)
    if wider:
        baselines = _baselines(torch_fn, args, kwargs, grad_args, go)
        at_zero, at_zero_grads = _torch_result(
            torch_fn, [torch.zeros_like(args[0]), *args[1:]], kwargs, grad_args, go, torch.float32
        )
        at_zero = [at_zero, *at_zero_grads]
    for k, (what, actual, expected) in wider.items():
        assert_close(
            actual,
            expected,
            tol=tol,
            msg=what,
            input_scale=scale,
            terms=args[0].numel(),
            torch_error=max(relative_error(b[k], expected)[0] for b in baselines),
            natural=_largest(at_zero[k]) / (_largest(expected) or 1.0),
        )
    return out, grads


def _baselines(torch_fn, args, kwargs, grad_args, go):
    """The results (value, then gradients) of torch in fp32 on the inputs, and for small inputs of torch in
    fp64 with each floating input in turn moved one fp32 step (module docstring)."""
    nudges = _float_keys(args, kwargs, go) if args[0].numel() <= SMALL_INPUT else []
    runs = [_torch_result(torch_fn, args, kwargs, grad_args, go, torch.float32)] + [
        _torch_result(torch_fn, args, kwargs, grad_args, go, torch.float64, nudge) for nudge in nudges
    ]
    return [[value, *grads] for value, grads in runs]


def _largest(t):
    """max |t| over its finite entries (0 for none)."""
    if t.numel() == 0:
        return 0.0
    largest = t.detach().abs().max().double().item()
    if math.isfinite(largest):
        return largest
    finite = t.detach()[torch.isfinite(t.detach())]
    return finite.abs().max().double().item() if finite.numel() else 0.0


def _is_float(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _float_keys(args, kwargs, go):
    """Where a call's floating tensors are: ("arg", position), ("kwarg", name) and ("go",)."""
    return (
        [("arg", i) for i, a in enumerate(args) if _is_float(a)]
        + [("kwarg", k) for k, v in kwargs.items() if _is_float(v)]
        + ([("go",)] if go is not None else [])
    )


def _torch_result(torch_fn, args, kwargs, grad_args, go, to_dtype, nudge=None):
    """torch_fn's value and gradients w.r.t. args[i] for i in grad_args, with every floating tensor (and
    the upstream gradient, and a module's parameters and buffers) cast to to_dtype, or as given for None;
    the tensor at `nudge` (a _float_keys key) then scaled by 1 + eps(fp32), one fp32 step."""

    def cast(t, key):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach()
        if to_dtype is None or not t.is_floating_point():
            return t
        t = t.to(to_dtype)
        return t * (1 + torch.finfo(torch.float32).eps) if key == nudge else t

    if to_dtype is not None and isinstance(torch_fn, torch.nn.Module):
        torch_fn = copy.deepcopy(torch_fn).to(to_dtype)
    ref_args = [cast(a, ("arg", i)) for i, a in enumerate(args)]
    ref_args = [a.requires_grad_(True) if i in grad_args else a for i, a in enumerate(ref_args)]
    ref = torch_fn(*ref_args, **{k: cast(v, ("kwarg", k)) for k, v in kwargs.items()})
    if not grad_args:
        return ref, []
    return ref, list(
        torch.autograd.grad(ref, [ref_args[i] for i in grad_args], cast(go, ("go",)).to(ref.dtype), allow_unused=True)
    )
