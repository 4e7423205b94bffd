"""The one transformers version this integration needs, checked where transformers is first used.

4.50 is the first release whose models have a settable `PreTrainedModel.loss_function` (the per-model form sets
it) and whose causal-LM forwards take `logits_to_keep` as a tensor of positions (the fused forward passes an
empty one, so the model's own forward computes no logits). The Trainer behaviour the tests pin down (labels
counted after the shift for causal-LM losses) is that of the transformers installed with the tests.
"""

import importlib
import importlib.metadata
import re

MIN_TRANSFORMERS_VERSION = "4.50"

MISSING_MESSAGE = (
    f"fused_ce.integrations.transformers needs transformers {MIN_TRANSFORMERS_VERSION} or newer "
    f"(pip install 'transformers>={MIN_TRANSFORMERS_VERSION}')"
)


def _release(version):
    """(major, minor) of a version string such as '5.25.0' or '4.57.0.dev0'."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_version():
    """Raises ImportError with MISSING_MESSAGE unless transformers >= MIN_TRANSFORMERS_VERSION is installed."""
    try:
        installed = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError(MISSING_MESSAGE) from error
    if _release(installed) < _release(MIN_TRANSFORMERS_VERSION):
        raise ImportError(f"{MISSING_MESSAGE}; found transformers {installed}")
    return installed


def _attribute(module, name=None):
    """`module` (or its attribute `name`), imported after the version check."""
    check_version()
    try:
        imported = importlib.import_module(module)
        return imported if name is None else getattr(imported, name)
    except (ImportError, AttributeError) as error:
        raise ImportError(MISSING_MESSAGE) from error


def loss_utils():
    return _attribute("transformers.loss.loss_utils")


def pretrained_model_class():
    return _attribute("transformers.modeling_utils", "PreTrainedModel")


def label_smoother_class():
    return _attribute("transformers.trainer_pt_utils", "LabelSmoother")
