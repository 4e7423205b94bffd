import os

# Threads that wait by spinning (OpenMP's default) stall each other when the machine has more busy
# processes than cores, which makes tiny tensor ops take 100+ ms; waiting passively keeps both threads
# (and so the kernels' parallel paths) without that cost. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

import fused_ce
from helpers import DEVICES


def pytest_report_header(config):
    where = fused_ce.__file__
    cuda = "cuda cases collected" if "cuda" in DEVICES else "no GPU: cuda cases not collected"
    return f"fused_ce {fused_ce.__version__} from {where}; torch {torch.__version__}; devices {DEVICES} ({cuda})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
