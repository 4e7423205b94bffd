"""docs/dtypes.md, checked call by call: every row of its two tables (same dtype everywhere, mixed dtypes) is a call of
a public entry point, made here with each reduction, whose returned loss, z_loss and lse must have the dtypes the
page gives, and whose loss must have the dtype of torch's counterpart (the same call to torch's loss, module or
transformers' stock loss function). The page is the one list: a row added there is checked here, and an entry point
that returns something the page does not name fails."""

import pathlib

import pytest
import torch
import torch.nn.functional as F

import fused_ce
import fused_ce.parallel
from fused_ce.testing.case_grid import short_name

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "dtypes.md"
DTYPES = {short_name(d): d for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16)}
REDUCTIONS = ["mean", "sum", "none"]
# The options that make the cross-entropy entry points return (loss, z_loss, lse).
LM = {"lse_square_scale": 1e-3, "return_z_loss": True, "return_lse": True}
N, C, H = 4, 5, 3  # rows, classes, hidden features (linear cross-entropy)


# ---- the page's tables ------------------------------------------------------------------------------------
def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text):
    """Every Markdown table of the page: a list of rows, each a dict keyed by the header's cells."""
    lines, tables, i = text.splitlines(), [], 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and set(lines[i + 1].replace("|", "").strip()) == {"-"}:
            header, rows, i = _cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _operands(text):
    """'logits fp32, target fp64' -> {'input': fp32, 'target': fp64}: the dtypes of the call's float operands."""
    names = {"logits": "input", "input": "input"}
    out = {}
    for part in text.split(","):
        name, dtype = part.split()
        out[names.get(name, name)] = DTYPES[dtype]
    return out


def documented_calls():
    """(entry point, operand dtypes, autocast dtype or None, {returned name: dtype}) for each call the page gives."""
    same, mixed = [t for t in _tables(DOC.read_text()) if t and "entry point" in t[0]]
    calls = {}
    for row in same:
        for column, value in row.items():
            if column in ("entry point", "returns"):
                continue
            autocast = torch.bfloat16 if column.startswith("autocast") else None
            dtype = column.split(", ")[1].split()[0] if autocast else column
            key = (row["entry point"], dtype, autocast)
            calls.setdefault(key, ({"input": DTYPES[dtype]}, {}))[1][row["returns"]] = DTYPES[value]
    for row in mixed:
        autocast = None if row["autocast"] == "—" else DTYPES[row["autocast"]]
        expected = {name: DTYPES[row[name]] for name in ("loss", "z_loss", "lse") if row[name] != "—"}
        calls[(row["entry point"], row["operands"], autocast)] = (_operands(row["operands"]), expected)
    return [(entry, ops, autocast, expected) for (entry, _, autocast), (ops, expected) in calls.items()]


# ---- the calls --------------------------------------------------------------------------------------------
# Each maker takes the operand dtypes and a reduction and returns ([(returned name, tensor), ...], torch's loss or
# None where torch has no counterpart).
def _gen():
    return torch.Generator().manual_seed(0)


def _randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _positive(shape, dtype, gen):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)


def _probabilities(shape, dtype, gen):
    return torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), -1).to(dtype)


def _optional(ops, name, make):
    return make(ops[name]) if name in ops else None


def _named(plain, with_options):
    """The plain call's loss, then the loss, z_loss and lse of the call with the options."""
    loss, z_loss, lse = with_options
    return [("loss", plain), ("loss", loss), ("z_loss", z_loss), ("lse", lse)]


def _cross_entropy(api, probabilities):
    def call(ops, reduction):
        g = _gen()
        x = _randn((N, C), ops["input"], g)
        t = (
            _probabilities((N, C), ops.get("target", ops["input"]), g)
            if probabilities
            else torch.randint(0, C, (N,), generator=g)
        )
        w = _optional(ops, "weight", lambda d: _positive(C, d, g))
        if api == "module":
            plain = fused_ce.CrossEntropyLoss(weight=w, reduction=reduction)(x, t)
            options = fused_ce.CrossEntropyLoss(weight=w, reduction=reduction, **LM)(x, t)
            theirs = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction)(x, t)
        elif api == "function":
            plain = fused_ce.CrossEntropyFunction.apply(x, t, w, -100, reduction)
            options = fused_ce.CrossEntropyFunction.apply(x, t, w, -100, reduction, **LM)
            theirs = F.cross_entropy(x, t, w, reduction=reduction)
        else:
            plain = fused_ce.cross_entropy(x, t, w, reduction=reduction)
            options = fused_ce.cross_entropy(x, t, w, reduction=reduction, **LM)
            theirs = F.cross_entropy(x, t, w, reduction=reduction)
        return _named(plain, options), theirs

    return call


def _bce(api):
    def call(ops, reduction):
        g = _gen()
        x = _randn((N, C), ops["input"], g)
        t = torch.rand((N, C), generator=g, dtype=torch.float64).to(ops.get("target", ops["input"]))
        kwargs = {
            "weight": _optional(ops, "weight", lambda d: _positive(C, d, g)),
            "pos_weight": _optional(ops, "pos_weight", lambda d: _positive(C, d, g)),
            "reduction": reduction,
        }
        if api == "module":
            ours = fused_ce.BCEWithLogitsLoss(**kwargs)(x, t)
            theirs = torch.nn.BCEWithLogitsLoss(**kwargs)(x, t)
        elif api == "function":
            ours = fused_ce.BCEWithLogitsFunction.apply(x, t, kwargs["weight"], reduction, kwargs["pos_weight"])
            theirs = F.binary_cross_entropy_with_logits(x, t, **kwargs)
        else:
            ours = fused_ce.binary_cross_entropy_with_logits(x, t, **kwargs)
            theirs = F.binary_cross_entropy_with_logits(x, t, **kwargs)
        return [("loss", ours)], theirs

    return call


def _torch_linear_cross_entropy(x, linear_weight, target, weight, reduction):
    """torch 2.13's F.linear_cross_entropy, or on older torch the composite it computes (the same dtypes)."""
    if hasattr(F, "linear_cross_entropy"):
        return F.linear_cross_entropy(x, linear_weight, target, weight=weight, reduction=reduction)
    return F.cross_entropy(F.linear(x, linear_weight), target, weight, reduction=reduction)


def _linear_problem(ops, gen):
    x = _randn((N, H), ops["input"], gen)
    linear_weight = _randn((C, H), ops.get("linear_weight", ops["input"]), gen)
    return (
        x,
        linear_weight,
        torch.randint(0, C, (N,), generator=gen),
        _optional(ops, "weight", lambda d: _positive(C, d, gen)),
    )


def _linear(api):
    def call(ops, reduction):
        x, lw, y, w = _linear_problem(ops, _gen())
        if api == "module":

            def module(**options):
                m = fused_ce.LinearCrossEntropyLoss(H, C, weight=w, reduction=reduction, dtype=lw.dtype, **options)
                with torch.no_grad():
                    m.linear.weight.copy_(lw)
                return m(x, y)

            plain, options = module(), module(**LM)
        else:
            plain = fused_ce.linear_cross_entropy(x, lw, y, weight=w, reduction=reduction)
            options = fused_ce.linear_cross_entropy(x, lw, y, weight=w, reduction=reduction, **LM)
        return _named(plain, options), _torch_linear_cross_entropy(x, lw, y, w, reduction)

    return call


def _parallel_cross_entropy(ops, reduction):
    g = _gen()
    x = _randn((N, C), ops["input"], g)
    y = torch.randint(0, C, (N,), generator=g)
    w = _optional(ops, "weight", lambda d: _positive(C, d, g))
    ours = [
        ("loss", fused_ce.parallel.cross_entropy(x, y, weight=w, reduction=reduction, **_on_one_rank())),
        (
            "loss",
            fused_ce.parallel.cross_entropy(
                x, y, weight=w, reduction=reduction, lse_square_scale=1e-3, **_on_one_rank()
            ),
        ),
    ]
    return ours, F.cross_entropy(x, y, w, reduction=reduction)


def _parallel_linear_cross_entropy(ops, reduction):
    x, lw, y, w = _linear_problem(ops, _gen())
    ours = [
        ("loss", fused_ce.parallel.linear_cross_entropy(x, lw, y, weight=w, reduction=reduction, **_on_one_rank())),
        (
            "loss",
            fused_ce.parallel.linear_cross_entropy(
                x, lw, y, weight=w, reduction=reduction, lse_square_scale=1e-3, **_on_one_rank()
            ),
        ),
    ]
    return ours, _torch_linear_cross_entropy(x, lw, y, w, reduction)


def _on_one_rank():
    """The parallel entry points on the one rank of the one_rank_group fixture (conftest.py), which holds every
    class."""
    return {"class_offsets": [0, C]}


def _hugging_face(loss_type, multi_label=False):
    def call(ops, reduction):
        transformers = pytest.importorskip("transformers")
        from transformers.loss import loss_utils

        from fused_ce.integrations.transformers import fused_loss_function

        stock = loss_utils.LOSS_MAPPING[loss_type]
        fused = fused_loss_function(loss_type)
        g = _gen()
        if loss_type == "ForSequenceClassification":
            config = transformers.PretrainedConfig(num_labels=C)
            config.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
            logits = _randn((2, C), ops["input"], g)
            labels = (
                torch.rand((2, C), generator=g, dtype=torch.float64).to(ops.get("target", ops["input"]))
                if multi_label
                else torch.randint(0, C, (2,), generator=g)
            )
            return [("loss", fused(labels, logits, config))], stock(labels, logits, config)
        logits = _randn((2, 3, C), ops["input"], g)
        labels = torch.randint(0, C, (2, 3), generator=g)
        if loss_type == "ForTokenClassification":
            config = transformers.PretrainedConfig(num_labels=C)
            return [("loss", fused(logits, labels, config))], stock(logits, labels, config)
        return [("loss", fused(logits, labels, vocab_size=C))], stock(logits, labels, vocab_size=C)

    call.reductions = ["mean"]  # transformers' losses take no reduction
    return call


ENTRY_POINTS = {
    "`cross_entropy`, class indices": _cross_entropy("functional", probabilities=False),
    "`cross_entropy`, probabilities": _cross_entropy("functional", probabilities=True),
    "`CrossEntropyLoss`, class indices": _cross_entropy("module", probabilities=False),
    "`CrossEntropyFunction.apply`, class indices": _cross_entropy("function", probabilities=False),
    "`binary_cross_entropy_with_logits`": _bce("functional"),
    "`BCEWithLogitsLoss`": _bce("module"),
    "`BCEWithLogitsFunction.apply`": _bce("function"),
    "`linear_cross_entropy`": _linear("functional"),
    "`LinearCrossEntropyLoss`": _linear("module"),
    "`parallel.cross_entropy`": _parallel_cross_entropy,
    "`parallel.linear_cross_entropy`": _parallel_linear_cross_entropy,
    "`use_fused_ce`, ForCausalLM": _hugging_face("ForCausalLM"),
    "`use_fused_ce`, ForMaskedLM": _hugging_face("ForMaskedLM"),
    "`use_fused_ce`, ForTokenClassification": _hugging_face("ForTokenClassification"),
    "`use_fused_ce`, ForSequenceClassification, single label": _hugging_face("ForSequenceClassification"),
    "`use_fused_ce`, ForSequenceClassification, multi label": _hugging_face("ForSequenceClassification", True),
}
CALLS = documented_calls()


def _call_id(call):
    entry, ops, autocast, _ = call
    operands = " ".join(f"{k}={short_name(v)}" for k, v in ops.items())
    return f"{entry.replace('`', '')} {operands}" + (f" autocast={short_name(autocast)}" if autocast else "")


@pytest.mark.parametrize("call", CALLS, ids=[_call_id(c) for c in CALLS])
def test_returned_dtypes_as_documented(call, one_rank_group):
    entry, ops, autocast, expected = call
    make = ENTRY_POINTS[entry]
    for reduction in getattr(make, "reductions", REDUCTIONS):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            returned, theirs = make(ops, reduction)
        where = f"{entry} with {reduction!r}"
        assert {name for name, _ in returned} == set(expected), (
            f"{where} returns {sorted({n for n, _ in returned})}, the page names {sorted(expected)}"
        )
        for name, tensor in returned:
            assert tensor.dtype == expected[name], f"{where}: {name} is {tensor.dtype}, the page says {expected[name]}"
        if theirs is not None:
            assert theirs.dtype == expected["loss"], f"{where}: torch's loss is {theirs.dtype}, fused_ce's must be too"


def test_every_entry_point_is_on_the_page():
    """Every public entry point (the package's, fused_ce.parallel's, the transformers integration's) has its
    rows; a name on the page that no call here makes would pass unchecked."""
    documented = {entry for entry, _, _, _ in CALLS}
    assert documented == set(ENTRY_POINTS)
    public = {name for name in fused_ce.__all__ if name != "build_info"}
    mentioned = {entry.split("`")[1].split(".")[0] for entry in ENTRY_POINTS}
    assert public <= mentioned, f"not on docs/dtypes.md: {sorted(public - mentioned)}"
