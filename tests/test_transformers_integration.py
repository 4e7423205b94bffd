"""fused_ce.integrations.transformers: tiny randomly initialized transformers models (no downloads) whose losses
fused_ce computes must give the stock model's loss, dtype and every parameter's gradient, and train alike."""

import copy
import importlib.metadata
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import relative_error, spy_on  # noqa: E402

import fused_ce  # noqa: E402
import fused_ce._lm.row_loss_sum  # noqa: E402
from fused_ce.integrations.transformers import MIN_TRANSFORMERS_VERSION, FusedLoss, restore, use_fused_ce  # noqa: E402

VOCAB, BATCH, SEQ = 101, 2, 7
# The stock losses compute in fp32 (transformers upcasts fp16/bf16 and downcasts fp64 logits); fused_ce's in
# the logits' dtype with fp32 accumulation, summed in another order: fp32 rounding apart, relative to size.
TOL = 2e-5


# initializer_range=0.5: logits spread far from uniform, so that a loss on the wrong labels is far from the right one.
def _llama_config(**extra):
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.5,
        **extra,
    )


def _modernbert_config():
    # BERT itself computes its masked-LM loss inline, without transformers' loss mapping; ModernBERT uses it.
    return transformers.ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.5,
    )


def _ids(gen):
    return torch.randint(1, VOCAB, (BATCH, SEQ), generator=gen)  # no pad token: the last token is pooled


def _with_ignored(labels, gen):
    return labels.masked_fill(torch.rand(labels.shape, generator=gen) < 0.3, -100)


def _causal(gen):
    ids = _ids(gen)
    return transformers.LlamaForCausalLM(_llama_config()), {"input_ids": ids, "labels": _with_ignored(ids, gen)}


def _causal_num_items(gen):
    model, batch = _causal(gen)
    batch["num_items_in_batch"] = torch.tensor(13)  # e.g. the tokens of all accumulated micro-batches
    return model, batch


def _causal_shift_labels(gen):
    model, batch = _causal(gen)
    batch["shift_labels"] = _with_ignored(torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen), gen)
    return model, batch


def _masked(gen):
    ids = _ids(gen)
    return transformers.ModernBertForMaskedLM(_modernbert_config()), {
        "input_ids": ids,
        "labels": _with_ignored(ids, gen),
    }


def _single_label(gen):
    model = transformers.LlamaForSequenceClassification(_llama_config(num_labels=3))
    return model, {"input_ids": _ids(gen), "labels": torch.randint(0, 3, (BATCH,), generator=gen)}


def _multi_label(gen):
    model = transformers.LlamaForSequenceClassification(_llama_config(num_labels=4))
    return model, {"input_ids": _ids(gen), "labels": (torch.rand(BATCH, 4, generator=gen) < 0.5)}


def _token_classification(gen):
    model = transformers.LlamaForTokenClassification(_llama_config(num_labels=5))
    labels = _with_ignored(torch.randint(0, 5, (BATCH, SEQ), generator=gen), gen)
    return model, {"input_ids": _ids(gen), "labels": labels}


CASES = {
    "causal": _causal,
    "causal_num_items": _causal_num_items,
    "causal_shift_labels": _causal_shift_labels,
    "masked": _masked,
    "single_label": _single_label,
    "multi_label": _multi_label,
    "token_classification": _token_classification,
}


def _twins(case, dtype, keep_logits=False):
    """The stock model, its fused twin with the same weights, and a batch (float labels in the model's dtype).
    The models are in training mode, as built: the fused causal LM computes its loss from the hidden states,
    unless keep_logits."""
    torch.manual_seed(0)
    stock, batch = CASES[case](torch.Generator().manual_seed(1))
    stock = stock.to(dtype)
    if batch["labels"].dtype == torch.bool:
        batch["labels"] = batch["labels"].to(dtype)
    fused = use_fused_ce(copy.deepcopy(stock), keep_logits=keep_logits)
    return stock, fused, batch


def _loss(model, batch):
    torch.manual_seed(2)  # the same dropout masks for both twins
    return model(**batch).loss


def _assert_near(actual, expected, what, tol=TOL):
    error, problem = relative_error(actual, expected)
    assert problem is None and error <= tol, f"{what}: error {error:.3g} > {tol:g} {problem or ''}"


@pytest.fixture
def fused_calls(monkeypatch):
    """The dtypes fused_ce's losses compute in (autocast would make them fp32), from logits or hidden states."""
    return spy_on(
        monkeypatch,
        (
            (fused_ce.functional, "cross_entropy"),
            (fused_ce.functional, "binary_cross_entropy_with_logits"),
            (fused_ce._lm.row_loss_sum, "summed_row_losses"),
            (fused_ce.linear, "summed_in_fp32"),
        ),
        lambda name, args: fused_ce._core.validation.autocast_fp32(args[0])[0].dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_equal_stock(case, dtype, fused_calls):
    stock, fused, batch = _twins(case, dtype)
    expected = _loss(stock, batch)
    actual = _loss(fused, batch)
    assert fused_calls == [dtype], "the fused model's loss must be fused_ce's, on the logits as they are"
    assert actual.dtype == expected.dtype
    _assert_near(actual, expected, "loss")
    expected.backward()
    actual.backward()
    fused_params = dict(fused.named_parameters())
    for name, p in stock.named_parameters():
        if p.grad is not None:
            _assert_near(fused_params[name].grad, p.grad, name)
        else:
            assert fused_params[name].grad is None, name


def test_training_steps_follow_stock():
    stock, fused, batch = _twins("causal", torch.float32)
    histories = []
    for model in (stock, fused):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(4):
            loss = _loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        histories.append(torch.stack(losses))
    assert histories[0][-1] < histories[0][0]  # the steps do train
    _assert_near(histories[1], histories[0], "losses", tol=1e-4)


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16_model", "autocast"])
@pytest.mark.parametrize("case", ["causal", "single_label"])
def test_bf16_logits_not_upcast(case, autocast, fused_calls):
    stock, fused, batch = _twins(case, torch.float32 if autocast else torch.bfloat16, keep_logits=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        # fp32 for causal LM (transformers upcasts) and under autocast; else bf16 for sequence classification.
        expected_dtype = _loss(stock, batch).dtype
        torch.manual_seed(2)
        out = fused(**batch)
    assert out.logits.dtype == torch.bfloat16
    assert fused_calls == [torch.bfloat16]
    assert out.loss.dtype == expected_dtype
    # Judged against the exact loss of the same bf16 logits (torch's own bf16 kernel is no reference), and by the
    # logits' gradient too: a random model's loss is nearly the same for most labels.
    out.logits.retain_grad()
    out.loss.backward()
    exact = out.logits.detach().double().requires_grad_()
    logits, labels = exact, batch["labels"]
    if case == "causal":
        logits, labels = logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    expected.backward()
    _assert_near(out.loss, expected, "loss", tol=4e-3)  # two bf16 roundings
    _assert_near(out.logits.grad, exact.grad, "logits' gradient", tol=8e-3)


def test_options_reach_fused_ce():
    _stock, fused, batch = _twins("causal", torch.float64)
    use_fused_ce(fused, label_smoothing=0.25)
    logits = fused(input_ids=batch["input_ids"]).logits.detach()
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1), label_smoothing=0.25
    )
    _assert_near(fused(**batch).loss, expected, "label-smoothed loss", tol=1e-6)
    with pytest.raises(ValueError, match="'reduction' is set by transformers"):
        use_fused_ce(fused, reduction="sum")


def test_regression_stays_with_transformers(fused_calls):
    torch.manual_seed(0)
    stock = transformers.LlamaForSequenceClassification(_llama_config(num_labels=1))
    fused = use_fused_ce(copy.deepcopy(stock))
    batch = {"input_ids": _ids(torch.Generator().manual_seed(1)), "labels": torch.randn(BATCH)}
    assert torch.equal(fused(**batch).loss, stock(**batch).loss)
    assert fused_calls == []


def test_model_call_is_idempotent_and_restored():
    loss_utils = transformers.loss.loss_utils
    model = transformers.LlamaForCausalLM(_llama_config())
    assert use_fused_ce(use_fused_ce(model, label_smoothing=0.1)) is model
    assert isinstance(model.loss_function, FusedLoss)
    assert model.loss_function.stock is loss_utils.ForCausalLMLoss and model.loss_function.options == {}
    # What transformers and training loops do to a model keeps its loss.
    assert isinstance(copy.deepcopy(model.to(torch.float64).train()).loss_function, FusedLoss)
    assert restore(model).loss_function is loss_utils.ForCausalLMLoss
    with pytest.raises(ValueError, match="no counterpart"):
        use_fused_ce(transformers.LlamaForQuestionAnswering(_llama_config()))


def test_global_form_covers_models_and_is_restored(fused_calls):
    loss_utils = transformers.loss.loss_utils
    before = dict(loss_utils.LOSS_MAPPING)
    torch.manual_seed(0)
    existing, batch = _masked(torch.Generator().manual_seed(1))
    try:
        use_fused_ce()
        use_fused_ce()  # a second call must not wrap the fused losses again
        # The Trainer tells causal-LM losses by LOSS_MAPPING's entry: it stays transformers' own.
        assert loss_utils.LOSS_MAPPING == before
        created, _ = _masked(torch.Generator().manual_seed(1))
        for model in (existing, created):
            assert isinstance(model.loss_function, FusedLoss)
            assert model.loss_function.stock is loss_utils.ForMaskedLMLoss
        own = use_fused_ce(transformers.LlamaForCausalLM(_llama_config()), label_smoothing=0.5)
        assert own.loss_function.options == {"label_smoothing": 0.5}  # a model's own form wins
        assert isinstance(transformers.LlamaForQuestionAnswering(_llama_config()).loss_function, FusedLoss) is False
        existing(**batch).loss.backward()
        assert fused_calls == [torch.float32]
    finally:
        restore()
    assert loss_utils.LOSS_MAPPING == before
    assert existing.loss_function is loss_utils.ForMaskedLMLoss


def test_one_minimum_version_everywhere():
    """The constant the messages quote is the floor pyproject's extra installs and the docs state."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert f'"transformers>={MIN_TRANSFORMERS_VERSION}"' in f.read()
    for page in ("README.md", os.path.join("docs", "transformers.md")):
        with open(os.path.join(root, page)) as f:
            text = f.read()
        assert f"transformers>={MIN_TRANSFORMERS_VERSION}" in text or f"{MIN_TRANSFORMERS_VERSION} or newer" in text
        assert "fused-ce[transformers]" not in text  # not on an index: that install cannot work


@pytest.mark.parametrize("installed", [None, "4.49.2"])
def test_missing_or_old_transformers_is_a_clear_import_error(monkeypatch, installed):
    def version(name):
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(importlib.metadata, "version", version)
    message = rf"needs transformers {MIN_TRANSFORMERS_VERSION} or newer \(pip install 'transformers>=4.50'\)"
    with pytest.raises(ImportError, match=message + ("" if installed is None else "; found transformers 4.49.2")):
        use_fused_ce()


@pytest.mark.parametrize("num_items", [None, 3000])
def test_bf16_loss_keeps_fp32_precision(num_items):
    # transformers returns an fp32 loss of bf16 logits; one bf16 rounding of the total (2^-9 relative) would show
    # in loss curves. Per-row bf16 roundings, summed in fp32, average out over many rows.
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(4096, VOCAB, generator=gen)).bfloat16()
    labels = _with_ignored(torch.randint(0, VOCAB, (4096,), generator=gen), gen)
    loss_function = use_fused_ce(transformers.LlamaForCausalLM(_llama_config())).loss_function
    actual = loss_function(
        logits=logits.view(2, 2048, VOCAB), labels=labels.view(2, 2048), vocab_size=VOCAB, num_items_in_batch=num_items
    )
    rows = torch.nn.functional.cross_entropy(
        logits.double().view(2, 2048, VOCAB)[:, :-1].reshape(-1, VOCAB),
        labels.view(2, 2048)[:, 1:].reshape(-1),
        reduction="none",
    )
    expected = rows.sum() / (num_items or (labels.view(2, 2048)[:, 1:] != -100).sum())
    assert actual.dtype == torch.float32
    _assert_near(actual, expected, "loss", tol=1e-4)


@pytest.mark.parametrize("num_items", [None, 3000])
@pytest.mark.parametrize(
    "options", [{}, {"softcap": 4.0}, {"lse_square_scale": 1e-3}], ids=["plain", "softcap", "z_loss"]
)
def test_bf16_loss_error_within_ten_times_stock(num_items, options):
    """On bf16 logits, the loss's error against the exact loss of those logits is within 10x of that of
    transformers' own loss (which upcasts the logits to fp32), or of one fp32 rounding of the loss where stock's
    happens to be smaller."""
    gen = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(2, 2048, VOCAB, generator=gen)).bfloat16()
    labels = _with_ignored(torch.randint(0, VOCAB, (2, 2048), generator=gen), gen)
    cap, z_scale = options.get("softcap"), options.get("lse_square_scale", 0.0)
    model = transformers.LlamaForCausalLM(_llama_config())
    actual = use_fused_ce(model, **options).loss_function(
        logits=logits, labels=labels, vocab_size=VOCAB, num_items_in_batch=num_items
    )

    def loss_of(values):  # the loss of the transformed logits in values' dtype, the z-loss as fused_ce defines it
        z = cap * torch.tanh(values / cap) if cap else values
        rows, shifted = z[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)
        counted = shifted != -100
        total = (
            torch.nn.functional.cross_entropy(rows, shifted, reduction="sum")
            + z_scale * (torch.logsumexp(rows, -1)[counted] ** 2).sum()
        )
        return total / (num_items or counted.sum())

    exact = loss_of(logits.double())
    stock_error = (loss_of(logits.float()).double() - exact).abs() / exact  # transformers' upcast of the logits
    error = (actual.double() - exact).abs() / exact
    assert actual.dtype == torch.float32
    assert error <= 10 * max(stock_error, 2.0**-24), f"error {error:.3g}, stock's {stock_error:.3g}"


def test_fused_loss_compiles_fullgraph():
    loss_function = use_fused_ce(transformers.LlamaForCausalLM(_llama_config())).loss_function
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(BATCH, SEQ, VOCAB, generator=gen).bfloat16()
    labels = _with_ignored(torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen), gen)
    kwargs = {"labels": labels, "vocab_size": VOCAB, "num_items_in_batch": torch.tensor(9)}
    compiled = torch.compile(loss_function, fullgraph=True)(logits=logits, **kwargs)
    _assert_near(compiled, loss_function(logits=logits, **kwargs), "compiled loss", tol=1e-6)


def test_language_model_options_reach_fused_ce():
    _stock, fused, batch = _twins("causal", torch.float64)
    use_fused_ce(fused, softcap=2.0, lse_square_scale=1e-2)
    logits = fused(input_ids=batch["input_ids"]).logits.detach()
    z = 2.0 * torch.tanh(logits[:, :-1].reshape(-1, VOCAB) / 2.0)
    labels = batch["labels"][:, 1:].reshape(-1)
    counted = labels != -100
    expected = torch.nn.functional.cross_entropy(z, labels) + 1e-2 * (torch.logsumexp(z, 1)[counted] ** 2).mean()
    _assert_near(
        fused(**batch).loss, expected, "soft-capped loss with z-loss", tol=1e-6
    )  # returned in fp32, as transformers does
    for name in ("return_z_loss", "return_lse"):
        with pytest.raises(ValueError, match=f"'{name}' would make the loss a tuple"):
            use_fused_ce(fused, **{name: True})
