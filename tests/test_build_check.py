"""A build or wheel of fused_ce made for another torch must fail to import with an ImportError that names the torch
it was built for, the torch found, and the fix (fused_ce/_build_check.py), never with an undefined symbol or a
crash. The installed package is copied and its build record (or its binary) altered, then imported in a fresh
interpreter beside the real torch."""

import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

import fused_ce
from fused_ce._core import build_check as _build_check

RECORDED = fused_ce.build_info()
needs_record = pytest.mark.skipif(RECORDED is None, reason="this fused_ce was built without setup.py's build record")


def _info(torch_version, cuda_kernels=False, torch_cuda=None):
    return types.SimpleNamespace(
        VERSION="0.1.0",
        TORCH=torch_version,
        TORCH_CUDA=torch_cuda,
        CUDA_KERNELS=cuda_kernels,
        CUDA_TOOLKIT="13.0" if cuda_kernels else None,
    )


@pytest.mark.parametrize(
    "built,running,running_cuda,expected",
    [
        (_info("2.13.0+cpu"), "2.13.1+cpu", None, None),  # a patch release keeps the ABI
        (_info("2.13.0+cpu"), "2.13.0+cu130", "13.0", None),  # CPU kernels run beside a CUDA torch
        (_info("2.13.0"), "2.14.1+cu130", "13.0", "its torch release differs"),
        (_info("2.4.0+cu121"), "2.13.0+cpu", None, "its torch release differs"),
        (_info("2.15.0.dev20261201"), "2.15.0.dev20261203", None, None),
        (_info("2.14.1+cu130", True, "13.0"), "2.14.1+cpu", None, "its CUDA kernels need a torch built with CUDA 13.0"),
        (
            _info("2.14.1+cu130", True, "13.0"),
            "2.14.1+cu126",
            "12.6",
            "its CUDA kernels need a torch built with CUDA 13.0",
        ),
        (_info("2.14.1+cu130", True, "13.0"), "2.14.1+cu132", "13.2", None),
    ],
)
def test_mismatch_rules(built, running, running_cuda, expected):
    assert _build_check.mismatch(built, running, running_cuda) == expected


@needs_record
def test_the_installed_build_recorded_this_torch():
    assert RECORDED["torch"] == torch.__version__
    assert RECORDED["torch_cuda"] == torch.version.cuda
    assert RECORDED["version"].split("+")[0] == fused_ce.__version__
    assert RECORDED["cuda_kernels"] == torch._C._dispatch_has_kernel_for_dispatch_key(
        "fused_ce::cross_entropy_fwd", "CUDA"
    )


def _package_copy(tmp_path):
    dest = tmp_path / "site" / "fused_ce"
    shutil.copytree(
        os.path.dirname(fused_ce.__file__), dest, ignore=shutil.ignore_patterns("__pycache__", "_C_emulated_cuda*")
    )
    return dest


def _import_in_fresh_interpreter(site):
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("FUSED_CE_EMULATED_CUDA_LIBRARY", None)
    return subprocess.run(
        [sys.executable, "-c", "import fused_ce"], capture_output=True, text=True, env=env, timeout=300, cwd=str(site)
    )


@needs_record
def test_import_beside_another_torch_release_says_so(tmp_path):
    package = _package_copy(tmp_path)
    record = (package / "_build_info.py").read_text()
    (package / "_build_info.py").write_text(record.replace(f"TORCH = {torch.__version__!r}", "TORCH = '2.3.1+cpu'"))
    result = _import_in_fresh_interpreter(package.parent)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fused_ce "), result.stderr
    assert "was built for torch 2.3.1+cpu" in last
    assert f"but torch {torch.__version__} " in last
    assert "its torch release differs" in last
    assert "pip install" in last and "+pt<torch version><cpu|cuXYZ>" in last


@needs_record
def test_a_binary_that_fails_to_load_says_which_torch_it_was_built_for(tmp_path):
    package = _package_copy(tmp_path)
    [binary] = [p for p in package.iterdir() if p.name.startswith("_C.") and p.suffix == ".so"]
    binary.write_bytes(b"not an ELF file")
    result = _import_in_fresh_interpreter(package.parent)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fused_ce "), result.stderr
    assert f"was built for torch {torch.__version__}" in last
    assert "loading fused_ce._C failed" in last


@needs_record
def test_the_unaltered_copy_imports(tmp_path):
    """The copy itself is sound: the failures above come from what each test altered."""
    result = _import_in_fresh_interpreter(_package_copy(tmp_path).parent)
    assert result.returncode == 0, result.stderr
