"""The transformers Trainer with fused_ce (the per-model and the global form of use_fused_ce) must see what it
sees with stock transformers: each micro-batch's training loss (label shift, num_items_in_batch counted over
the shifted labels across gradient-accumulation micro-batches), eval_loss, the trained parameters, and
label_smoothing_factor. Tiny Llama from a config, a few SGD steps (SGD keeps parameter differences proportional
to gradient differences; Adam would turn a rounding-sized gradient into a full step)."""

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")

from helpers import relative_error, spy_on  # noqa: E402

import fused_ce.functional  # noqa: E402
from fused_ce.integrations.transformers import restore, use_fused_ce  # noqa: E402

VOCAB, SEQ, EXAMPLES = 211, 16, 8
FP32_TOL = 1e-5  # the bar for fp32: relative to the loss


def _model(dtype):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    return transformers.LlamaForCausalLM(config).to(dtype)


def _examples(seed):
    """Sequences with right padding of different lengths (labels -100 there), so that the count of labels after
    the shift differs between micro-batches."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(EXAMPLES):
        ids = torch.randint(3, VOCAB, (SEQ,), generator=gen)
        labels = ids.clone()
        labels[SEQ - 1 - (i * 3) % 9 :] = -100
        examples.append({"input_ids": ids, "labels": labels})
    return examples


class _RecordingTrainer(transformers.Trainer):
    """The stock Trainer, recording the loss each compute_loss returns (what training_step backpropagates)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.losses.append((result[0] if return_outputs else result).detach().float())
        return result


def _train(model, tmp_path, **arguments):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        **arguments,
    )
    trainer = _RecordingTrainer(model=model, args=args, train_dataset=_examples(1), eval_dataset=_examples(2))
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    return torch.stack(trainer.losses), eval_loss, trainer


def _assert_near(actual, expected, what, tol):
    error, problem = relative_error(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    )
    assert problem is None and error <= tol, f"{what}: relative error {error:.3g} > {tol:g} {problem or ''}"


def _stock_run(tmp_path, dtype=torch.float32, **arguments):
    return _train(_model(dtype), tmp_path / "stock", **arguments)


def _fused_run(form, tmp_path, dtype=torch.float32, **arguments):
    try:
        if form == "global":
            use_fused_ce()
            model = _model(dtype)  # built afterwards: it gets the fused forward too
        else:
            model = use_fused_ce(_model(dtype))
        return _train(model, tmp_path / form, **arguments)
    finally:
        restore()


@pytest.fixture
def fused_losses(monkeypatch):
    """Which of fused_ce's loss functions ran (from logits or from hidden states)."""
    return spy_on(
        monkeypatch,
        (
            (fused_ce.functional, "cross_entropy"),
            (fused_ce.linear, "summed_in_fp32"),
            (fused_ce._lm.row_loss_sum, "summed_row_losses"),
        ),
        lambda name, args: name,
    )


@pytest.mark.parametrize("form", ["model", "global"])
def test_trainer_fp32_losses_eval_and_weights_equal_stock(form, tmp_path, fused_losses):
    expected_losses, expected_eval, stock = _stock_run(tmp_path)
    assert not fused_losses
    actual_losses, actual_eval, fused = _fused_run(form, tmp_path)
    # 2 steps x 2 micro-batches from the hidden states; evaluation (4 examples per batch) from the logits.
    assert fused_losses.count("summed_in_fp32") == 4 and fused_losses.count("cross_entropy") == 2
    _assert_near(actual_losses, expected_losses, "training losses", FP32_TOL)
    _assert_near(actual_eval, expected_eval, "eval_loss", FP32_TOL)
    # What the Trainer inspects to count num_items_in_batch and pass it to the model (the first, in the
    # transformers releases that count labels after the shift).
    assert getattr(fused, "_loss_shifts_labels", True) and fused.model_accepts_loss_kwargs
    stock_params = dict(stock.model.named_parameters())
    for name, p in fused.model.named_parameters():
        _assert_near(p.detach(), stock_params[name].detach(), name, 1e-4)


def test_trainer_bf16_within_stock_bf16_spread(tmp_path):
    """bf16 models: the fused run stays as close to stock fp32 as stock bf16 does (the spread of bf16 itself)."""
    reference, reference_eval, _ = _stock_run(tmp_path / "fp32")
    stock, stock_eval, _ = _stock_run(tmp_path / "bf16", torch.bfloat16)
    fused, fused_eval, _ = _fused_run("model", tmp_path, torch.bfloat16)
    spread = (stock.double() - reference.double()).abs().max().item()
    assert spread > 0
    assert (fused.double() - reference.double()).abs().max().item() <= 2 * spread
    assert abs(fused_eval - reference_eval) <= 2 * abs(stock_eval - reference_eval) + 1e-6


@pytest.mark.parametrize("form", ["model", "global"])
def test_trainer_label_smoothing_factor_goes_through_fused_ce(form, tmp_path, fused_losses):
    expected_losses, expected_eval, _ = _stock_run(tmp_path, label_smoothing_factor=0.1)
    assert not fused_losses
    with pytest.warns(UserWarning, match="label_smoothing_factor"):
        actual_losses, actual_eval, _ = _fused_run(form, tmp_path, label_smoothing_factor=0.1)
    assert fused_losses.count("cross_entropy") == 6  # 4 micro-batches and 2 evaluation batches
    _assert_near(actual_losses, expected_losses, "smoothed training losses", FP32_TOL)
    _assert_near(actual_eval, expected_eval, "smoothed eval_loss", FP32_TOL)


def test_restored_trainer_is_stock(tmp_path, fused_losses):
    model = use_fused_ce(_model(torch.float32))
    restore(model)
    _train(copy.deepcopy(model), tmp_path)
    assert not fused_losses


def test_trainer_lora_model_equals_stock(tmp_path, fused_losses):
    """A PEFT/LoRA model wrapped before use_fused_ce: the Trainer unwraps it to inspect the transformers model."""
    peft = pytest.importorskip("peft")

    def lora(model):
        torch.manual_seed(3)
        return peft.get_peft_model(
            model,
            peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False),
        )

    expected_losses, expected_eval, _ = _train(lora(_model(torch.float32)), tmp_path / "stock")
    actual_losses, actual_eval, trainer = _train(use_fused_ce(lora(_model(torch.float32))), tmp_path / "fused")
    assert fused_losses.count("summed_in_fp32") == 4
    _assert_near(actual_losses, expected_losses, "training losses", FP32_TOL)
    _assert_near(actual_eval, expected_eval, "eval_loss", FP32_TOL)
    assert getattr(trainer, "_loss_shifts_labels", True) and trainer.model_accepts_loss_kwargs
