"""bf16 outputs are the fp32 results rounded as c10::BFloat16 rounds them, bit for bit, on every instruction set.

The bf16 kernels compute in fp32 exactly as the fp32 kernels do on the same (upcast) values, so a bf16 gradient
must equal the fp32 kernel's gradient rounded by torch's own .to(torch.bfloat16). Under AVX-512 on CPUs with
AVX512_BF16 the stores use vcvtne2ps2bf16 (csrc/cpu/vec_math.h), which reads denormal inputs as zero; the rows
below put some probabilities below 2^-126 (a logit 90 above the rest), whose bf16 gradients are denormals, not
zeros. The same check runs again with FUSED_CE_NATIVE_BF16=0 (at::vec's rounding), in a fresh process since the
switch is read once at load.
"""

import os
import subprocess
import sys

import torch
from cpu_isas import SUPPORTED_ISAS

import fused_ce

HERE = os.path.dirname(os.path.abspath(__file__))


def bf16_inputs(n, c):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, c, generator=gen) * 4).to(torch.bfloat16)
    x[::3, 2] = 90.0  # every third row: the other classes' probabilities are fp32 denormals
    x[1, 3] = float("inf")  # one row of NaN gradients
    target = torch.randint(0, c, (n,), generator=gen)
    return x, target


def ce_grad(x, target):
    leaf = x.clone().requires_grad_()
    fused_ce.cross_entropy(leaf, target, reduction="sum").backward()
    return leaf.grad


def bce_grad(x, y):
    leaf = x.clone().requires_grad_()
    fused_ce.binary_cross_entropy_with_logits(leaf, y, reduction="sum").backward()
    return leaf.grad


def assert_rounded_from_fp32(ours, fp32):
    assert ours.dtype == torch.bfloat16
    expected = fp32.to(torch.bfloat16)
    nan = expected.isnan()
    assert torch.equal(ours.isnan(), nan)
    same = ours.view(torch.int16) == expected.view(torch.int16)
    bad = ~same & ~nan
    assert not bad.any(), f"{int(bad.sum())} values differ, e.g. {ours[bad][:4]} vs {expected[bad][:4]}"


def check_all_isas():
    """Every shape has whole vectors, a partial one (1000 = 62 * 16 + 8) or only partial ones (7 classes)."""
    denormals = 0
    for isa in SUPPORTED_ISAS:
        os.environ["FUSED_CE_CPU_CAPABILITY"] = isa
        for n, c in ((48, 1024), (48, 1000), (6, 7)):
            x, target = bf16_inputs(n, c)
            fp32 = ce_grad(x.float(), target)
            denormals += int(((fp32 != 0) & (fp32.abs() < 2.0**-126)).sum())
            assert_rounded_from_fp32(ce_grad(x, target), fp32)
            y = torch.rand(n, c, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
            xb = x.clone()
            xb[::3] = -90.0  # sigmoid(-90) is an fp32 denormal
            assert_rounded_from_fp32(bce_grad(xb, y), bce_grad(xb.float(), y.float()))
    os.environ.pop("FUSED_CE_CPU_CAPABILITY", None)
    assert denormals > 0, "no fp32 denormal in the gradients: the inputs do not test what they should"


def test_bf16_stores_round_like_c10(monkeypatch):
    monkeypatch.delenv("FUSED_CE_CPU_CAPABILITY", raising=False)
    check_all_isas()


def test_bf16_stores_round_like_c10_without_native_conversion():
    env = {**os.environ, "FUSED_CE_NATIVE_BF16": "0"}
    env.pop("FUSED_CE_CPU_CAPABILITY", None)
    code = f"import sys; sys.path.insert(0, {HERE!r}); import test_bf16_stores as t; t.check_all_isas(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
