"""fused_ce.integrations.transformers' fused causal-LM forward, family by family (tiny models from configs,
benchmarks/hf_families.py): in training with labels its loss and every parameter's gradient equal the stock
model's (fp32, relative 1e-5 for the loss) while it keeps no N x V tensor for the backward and returns no logits;
elsewhere (evaluation, generation, logits_to_keep, keep_logits) it is the model's own forward."""

import copy
import inspect
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import hf_families  # noqa: E402
from helpers import relative_error, spy_on  # noqa: E402
from saved_tensors import SavedTensors  # noqa: E402

import fused_ce.linear  # noqa: E402
from fused_ce.integrations.transformers import use_fused_ce  # noqa: E402

# N = BATCH * SEQ rows above the hidden size, so that N x V is the largest thing a step could save.
VOCAB, HIDDEN, BATCH, SEQ = 257, 32, 2, 24
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4


def _batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=gen)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=gen) < 0.2, -100)
    return {"input_ids": ids, "labels": labels}


def _twins(family, **options):
    torch.manual_seed(0)
    stock = hf_families.build(family, VOCAB, HIDDEN).train()
    return stock, use_fused_ce(copy.deepcopy(stock), **options)


def _step(model, batch):
    torch.manual_seed(2)  # the same dropout masks for both twins
    with SavedTensors() as saved:
        out = model(**batch)
    out.loss.backward()
    return out, saved


def _assert_near(actual, expected, what, tol):
    error, problem = relative_error(actual, expected)
    assert problem is None and error <= tol, f"{what}: relative error {error:.3g} > {tol:g} {problem or ''}"


@pytest.fixture
def fused_from_hidden(monkeypatch):
    return spy_on(monkeypatch, [(fused_ce.linear, "summed_in_fp32")], lambda name, args: tuple(args[0].shape))


@pytest.mark.parametrize("family", list(hf_families.FAMILIES))
def test_training_loss_and_gradients_without_logits(family, fused_from_hidden):
    stock, fused = _twins(family)
    batch = _batch()
    expected, stock_saved = _step(stock, batch)
    actual, fused_saved = _step(fused, batch)
    if "logits_to_keep" not in inspect.signature(type(stock).forward).parameters:
        # Older transformers releases (GPT-2 and Gemma 3 in 4.50): the model's own forward, fused_ce's loss.
        assert not fused_from_hidden and actual.logits is not None
        _assert_near(actual.loss, expected.loss, "loss", LOSS_TOL)
        return
    assert fused_from_hidden == [(BATCH * SEQ, HIDDEN)] and actual.logits is None
    assert actual.loss.dtype == expected.loss.dtype == torch.float32
    _assert_near(actual.loss, expected.loss, "loss", LOSS_TOL)
    fused_params = dict(fused.named_parameters())
    for name, p in stock.named_parameters():
        _assert_near(fused_params[name].grad, p.grad, f"{name}'s gradient", GRAD_TOL)
    # Logits-shaped tensors (a last dimension of VOCAB over the rows): stock keeps at least one fp32 copy.
    logits_shaped = lambda shape: len(shape) > 1 and shape[-1] == VOCAB and BATCH * SEQ <= shape[0] * shape[1]  # noqa: E731
    assert stock_saved.bytes_where(logits_shaped) >= 4 * BATCH * SEQ * VOCAB
    assert fused_saved.bytes_where(logits_shaped) == 0


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_loss_kwargs_and_tuple_outputs(family):
    stock, fused = _twins(family)
    batch = _batch()
    gen = torch.Generator().manual_seed(5)
    extra = {
        "num_items_in_batch": torch.tensor(97),
        "return_dict": False,
        "shift_labels": torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen).masked_fill(
            torch.rand(BATCH, SEQ, generator=gen) < 0.3, -100
        ),
    }
    expected = stock(**batch, **extra)
    actual = fused(**batch, **extra)
    assert isinstance(actual, tuple) and len(actual) == len(expected) - 1  # the same, less the logits
    _assert_near(actual[0], expected[0], "loss", LOSS_TOL)


def test_logits_where_asked_for():
    stock, fused = _twins("gemma2")
    batch = _batch()
    ids = batch["input_ids"]
    for mode in ("train", "eval"):
        getattr(stock, mode)(), getattr(fused, mode)()
        assert torch.equal(fused(input_ids=ids, logits_to_keep=3).logits, stock(input_ids=ids, logits_to_keep=3).logits)
        assert torch.equal(fused(input_ids=ids).logits, stock(input_ids=ids).logits)
        for model in (stock, fused):  # labels for every position and 3 positions' logits: the model's own error
            with pytest.raises(ValueError, match="Expected input batch_size"):
                model(**batch, logits_to_keep=3)
    expected = stock(**batch)
    actual = fused(**batch)  # evaluation: the logits, and the loss fused_ce computes from them
    assert torch.equal(actual.logits, expected.logits)
    _assert_near(actual.loss, expected.loss, "eval loss", LOSS_TOL)
    prompt = batch["input_ids"][:, :5]
    assert torch.equal(
        fused.generate(prompt, max_new_tokens=3, do_sample=False),
        stock.generate(prompt, max_new_tokens=3, do_sample=False),
    )
    fused.train()
    use_fused_ce(fused, keep_logits=True)
    assert torch.equal(fused(**batch).logits, stock.train()(**batch).logits)


def test_unknown_logit_transform_is_an_error():
    """A config that declares a cap its model does not apply (or a model that transforms its logits some way
    the config does not say) is caught on the first fused call, not trained on."""
    _, fused = _twins("llama")
    fused.config.final_logit_softcapping = 3.0  # Llama's forward ignores it
    with pytest.raises(RuntimeError, match="LlamaForCausalLM's logits are not .* keep_logits=True"):
        fused(**_batch())


def test_bf16_loss_error_within_ten_times_stock():
    """bf16 weights: against the loss of the same weights in fp64, fused_ce's error is within 10x of stock's
    (stock rounds the logits to bf16 and computes the loss in fp32)."""
    stock, fused = _twins("llama")
    exact = copy.deepcopy(stock).double()
    stock, fused = stock.bfloat16(), fused.bfloat16()
    exact.load_state_dict({k: v.double() for k, v in stock.state_dict().items()})
    batch = _batch()
    with torch.no_grad():
        reference = exact(**batch).loss.double()
        stock_error = abs(stock(**batch).loss.double() - reference) / reference
        fused_error = abs(fused(**batch).loss.double() - reference) / reference
    assert fused_error <= 10 * stock_error + 1e-6, (fused_error, stock_error)
