"""`pip install .` as most users type it, with pip's build isolation.

The build must compile against the torch installed in the user's environment (build_backend/fused_ce_backend.py),
never download a second torch into the isolated build environment, and, where no torch is installed, stop within
seconds with instructions. The full isolated build (minutes) is not repeated here; these tests check its two
halves: the backend exposes the installed torch to an isolated build, and a build without torch fails fast.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_FILES = ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "build_backend", "python_pkg", "csrc"]


def _source_copy(dest):
    """The files a build reads, copied so that no build output lands in the checkout."""
    os.makedirs(dest)
    for name in BUILD_FILES:
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(dest, name))
    return dest


def _pip(python, *args, cwd=None, timeout=600):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    start = time.monotonic()
    result = subprocess.run(
        [python, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    return result, time.monotonic() - start


# What pip's build isolation does at interpreter start (a sitecustomize.py on PYTHONPATH): drop the
# interpreter's own site-packages from sys.path, so only the build environment's packages are importable.
ISOLATING_SITECUSTOMIZE = """
import os, site, sys
hidden = {os.path.normcase(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
sys.path[:] = [p for p in sys.path if os.path.normcase(p) not in hidden]
"""


def test_isolated_build_sees_the_installed_torch(tmp_path):
    """Isolated as pip does it (setuptools from an overlay folder, site-packages hidden), importing the backend
    must make the environment's own torch importable."""
    overlay = tmp_path / "overlay"
    result, _ = _pip(sys.executable, "install", "--quiet", "--target", str(overlay), "setuptools>=77", "wheel")
    assert result.returncode == 0, result.stderr
    isolation = tmp_path / "isolation"
    isolation.mkdir()
    (isolation / "sitecustomize.py").write_text(ISOLATING_SITECUSTOMIZE)
    probe = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch') is None, 'not isolated: torch importable before the backend'\n"
        "import fused_ce_backend\n"
        "import setuptools, torch\n"
        "print(torch.__file__)\n"
        "print(setuptools.__file__)\n"
        "print(fused_ce_backend.build_wheel.__module__)\n"
    )
    env = dict(
        os.environ,
        PYTHONNOUSERSITE="1",
        PYTHONPATH=os.pathsep.join([str(isolation), str(overlay), os.path.join(ROOT, "build_backend")]),
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    torch_file, setuptools_file, backend_module = out.stdout.split()
    import torch

    assert torch_file == torch.__file__
    assert setuptools_file.startswith(str(overlay))  # the build environment's setuptools still comes first
    assert backend_module == "setuptools.build_meta"


def test_pyproject_does_not_pull_torch_into_the_build_environment():
    import tomllib  # Python >= 3.11 (the project's test environment)

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        build = tomllib.load(f)["build-system"]
    assert not any(req.split("=")[0].split(">")[0].split("<")[0].strip() == "torch" for req in build["requires"])
    assert build["build-backend"] == "fused_ce_backend"
    assert os.path.isfile(os.path.join(ROOT, *build["backend-path"], "fused_ce_backend.py"))


def test_sdist_holds_every_source_file(tmp_path):
    """A source distribution builds on its own only if it carries every header, CUDA file and the backend."""
    src = _source_copy(str(tmp_path / "src"))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fused_ce_backend; print(fused_ce_backend.build_sdist(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=os.path.join(src, "build_backend"), USE_CUDA="0"),
    )
    assert out.returncode == 0, out.stderr
    with tarfile.open(tmp_path / "dist" / out.stdout.split()[-1]) as tar:
        packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = set()
    for top in ("csrc", "build_backend", "python_pkg"):
        for folder, _, files in os.walk(os.path.join(src, top)):
            needed |= {os.path.relpath(os.path.join(folder, f), src) for f in files if not f.endswith((".so", ".pyc"))}
    assert needed - packed == set()


@pytest.mark.slow
def test_pip_install_without_torch_fails_fast_with_instructions(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    src = _source_copy(str(tmp_path / "src"))
    result, seconds = _pip(python, "install", ".", cwd=src)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Install torch first" in output and "--index-url https://download.pytorch.org/whl/cpu" in output, output
    assert "Collecting torch" not in output and "Downloading torch" not in output, output
    assert seconds < 120, f"took {seconds:.0f} s"
