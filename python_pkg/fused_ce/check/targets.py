"""Where the self-check runs: the CPU kernels, the emulated CUDA build (fused_ce's CUDA kernels on CPU
tensors, when it is installed) and each visible GPU, each reported as its own device."""

import contextlib
from dataclasses import dataclass

import torch

from ..testing import emulated_cuda, emulated_cuda_available

EMULATED = "emulated_cuda"


@dataclass(frozen=True)
class Target:
    label: str  # what the table shows: cpu, emulated_cuda, cuda:0
    device: torch.device  # where the tensors live
    emulated: bool = False

    def active(self):
        """The context the cases run in: the emulator for the emulated build, nothing otherwise."""
        return emulated_cuda() if self.emulated else contextlib.nullcontext()


def _cuda(index):
    return Target(f"cuda:{index}", torch.device("cuda", index))


def select(name):
    """The targets for --device `name`: all (every one present), cpu (with the emulated build when it is
    installed), emulated_cuda, cuda (the current GPU) or cuda:N. Raises ValueError for one not present."""
    cpu = [Target("cpu", torch.device("cpu"))]
    emulated = [Target(EMULATED, torch.device("cpu"), emulated=True)] if emulated_cuda_available() else []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "all":
        return cpu + emulated + [_cuda(i) for i in range(gpus)]
    if name == "cpu":
        return cpu + emulated
    if name == EMULATED:
        if not emulated:
            raise ValueError("the emulated CUDA build is not installed (reinstall with FUSED_CE_EMULATED_CUDA=1)")
        return emulated
    if name == "cuda" or name.startswith("cuda:"):
        if gpus == 0:
            raise ValueError(
                f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} "
                f"(CUDA build: {torch.version.cuda})"
            )
        index = torch.cuda.current_device() if name == "cuda" else int(name.split(":", 1)[1])
        if not 0 <= index < gpus:
            raise ValueError(f"--device {name}: torch sees {gpus} GPU(s)")
        return [_cuda(index)]
    raise ValueError(f"--device must be all, cpu, {EMULATED}, cuda or cuda:N, got {name!r}")
