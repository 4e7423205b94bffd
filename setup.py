"""Build of the fused_ce extension.

CPU kernels always build. CUDA kernels build whenever a CUDA toolkit that compiles a test file and a CUDA build
of torch are present, whether or not a GPU is visible (so a GPU-less CI machine compiles every CUDA line); a
toolkit that cannot compile gives a CPU-only build with a warning. Environment:
  USE_CUDA=0|1          force a CPU-only build, or require the CUDA build (default: auto-detect)
  TORCH_CUDA_ARCH_LIST  CUDA archs, e.g. "9.0" (default "8.0;9.0+PTX")
  MAX_JOBS              parallel compile jobs (read by torch's ninja builder)
  DEBUG=1               -O0 -g (otherwise -O3 and no debug info for the host compiler)
  FUSED_CE_BUILD_BASE   build folder (default "build"), so CPU-only and CUDA builds can live side by side
  FUSED_CE_VERSION_LABEL=1  the version gets the torch label, e.g. 0.1.0+pt2130cpu (scripts/build_wheel.sh)
  FUSED_CE_EMULATED_CUDA=1     also build fused_ce._C_emulated_cuda: the CUDA glue and kernels of csrc/cuda
                        compiled by the host compiler against the CUDA emulator (csrc/cuda_emulation), so they
                        run on CPU tensors (fused_ce.testing.emulated_cuda()); needs no CUDA toolkit
  FUSED_CE_EMULATED_CUDA=asan  build only that extension, with AddressSanitizer and UndefinedBehaviorSanitizer
                        (load it with FUSED_CE_EMULATED_CUDA_LIBRARY and libasan preloaded, see
                        scripts/test_emulated_asan.sh)
"""

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


def _locate_cuda_toolkit():
    """Sets CUDA_HOME from what nvcc itself reports when it is unset. torch guesses it from the path of the
    `nvcc` on PATH, which is wrong when that nvcc is a wrapper script (e.g. /usr/local/bin/nvcc exec'ing
    /usr/local/cuda-13.0/bin/nvcc): the headers are then not found, minutes into the build."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or os.environ.get("USE_CUDA") == "0":
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    try:
        # --dryrun prints the steps without running them; _HERE_ is the real bin folder
        out = subprocess.run([nvcc, "--dryrun", "-c", "probe.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            home = os.path.dirname(line.split("=", 1)[1].strip())
            if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = home
            return


try:
    import torch

    if torch.version.cuda is not None:
        _locate_cuda_toolkit()
    from torch.utils import cpp_extension
except ImportError:  # tests/test_install.py runs this in an environment without torch
    sys.exit(
        "fused_ce builds against the PyTorch installed in this environment, and none was found. Install torch first:\n"
        "    pip install torch --index-url https://download.pytorch.org/whl/cpu    # CPU-only (small)\n"
        "    pip install torch                                                      # CUDA build (Linux default)\n"
        "then `pip install .` again (or `pip install --no-build-isolation .` when the build runs in another\n"
        "interpreter, as with `python -m build`)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEBUG = os.environ.get("DEBUG", "0") == "1"
# Python's own CFLAGS, which setuptools passes to every compile, carry -g. Release builds drop the debug info
# for the host compiler (not nvcc, which keeps -lineinfo): measured on 2 cores, the CPU build took 1 min 28 s
# instead of 2 min 14 s and fused_ce._C is 3.6 MB instead of 44 MB. DEBUG=1 builds keep -g.
NO_DEBUG_INFO = [] if DEBUG else ["-g0"]
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _cuda_probe_error():
    """Compiles a two-line CUDA file with the toolkit's nvcc (a few seconds). Returns None when it compiles,
    else why not: a toolkit with missing headers (e.g. `nvcc` found through a wrapper script, so CUDA_HOME is
    guessed wrong) would otherwise fail only minutes into the real build."""
    includes = []
    for d in [os.path.join(cpp_extension.CUDA_HOME, "include")] + _pip_cuda_include_dirs():
        includes += ["-I", d]
    compilers = {  # the host compiler sees the CUDA headers too (the glue includes cuda_runtime.h)
        "probe.cpp": [os.environ.get("CXX", "c++")],
        "probe.cu": [os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, compiler in compilers.items():
            src = os.path.join(tmp, name)
            with open(src, "w") as f:
                f.write("#include <cuda_runtime.h>\n")
                if name.endswith(".cu"):
                    f.write("__global__ void probe(float* x) { x[threadIdx.x] = 0.f; }\n")
            cmd = compiler + ["-c", src, "-o", src + ".o"] + includes
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{' '.join(cmd)}: {e}"
            if result.returncode != 0:
                return f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr).strip()[-2000:]}"
    return None


@functools.cache
def _toolkit_cuda_version():
    """The toolkit's CUDA version as nvcc prints it ("13.0"), or None when nvcc does not answer."""
    try:
        out = subprocess.run(
            [os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _cuda_major_mismatch():
    """Why the toolkit cannot build for this torch, or None. torch refuses a toolkit whose CUDA major version
    differs from the one torch was built with (e.g. an older torch built with CUDA 12 beside a CUDA 13 nvcc):
    the build would stop only after the CPU half was compiled."""
    toolkit = _toolkit_cuda_version()
    if toolkit is None or toolkit.split(".")[0] == torch.version.cuda.split(".")[0]:
        return None
    return (
        f"the CUDA toolkit at {cpp_extension.CUDA_HOME} is CUDA {toolkit}, torch {torch.__version__} was built "
        f"with CUDA {torch.version.cuda}; their major versions must match"
    )


def _want_cuda():
    flag = os.environ.get("USE_CUDA", "").strip()
    toolkit = cpp_extension.CUDA_HOME is not None
    torch_cuda = torch.version.cuda is not None
    if flag == "0":
        return False
    if flag == "1":
        if not (toolkit and torch_cuda):
            sys.exit(
                "USE_CUDA=1 but the CUDA build is impossible: "
                f"CUDA toolkit {'found' if toolkit else 'not found (set CUDA_HOME)'}, "
                f"torch {torch.__version__} is {'a CUDA' if torch_cuda else 'a CPU-only'} build."
            )
        mismatch = _cuda_major_mismatch()
        if mismatch:
            sys.exit(f"USE_CUDA=1 but {mismatch}. Set CUDA_HOME to a matching toolkit.")
        error = _cuda_probe_error()
        if error:
            sys.exit(
                f"USE_CUDA=1 but the CUDA toolkit at {cpp_extension.CUDA_HOME} cannot compile:\n{error}\n"
                "Set CUDA_HOME to the toolkit's folder (the one holding bin/nvcc and include/)."
            )
        return True
    if not (toolkit and torch_cuda):
        return False
    mismatch = _cuda_major_mismatch()
    if mismatch:
        print(
            f"fused_ce: WARNING: building WITHOUT CUDA kernels: {mismatch} (set CUDA_HOME to a matching toolkit, "
            "or USE_CUDA=0 to silence this)",
            file=sys.stderr,
        )
        return False
    error = _cuda_probe_error()
    if error:  # auto mode: the CPU build still works; say loudly why CUDA was left out
        print(
            f"fused_ce: WARNING: building WITHOUT CUDA kernels: the CUDA toolkit at {cpp_extension.CUDA_HOME} "
            f"cannot compile a test file (set CUDA_HOME to a complete toolkit, or USE_CUDA=0 to silence this):\n"
            f"{error}",
            file=sys.stderr,
        )
        return False
    return True


# The ISA objects are compiled outside torch's builder, which otherwise picks the C++ standard. Newer
# torch headers need C++20, and older ones compile under it too.
ISA_CXX_STD = "-std=c++20"


def _pip_cuda_include_dirs():
    """CUDA headers shipped as pip wheels (nvidia/cu13/include) next to a CUDA build of torch."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return [d for d in glob.glob(os.path.join(site, "nvidia", "cu*", "include")) if os.path.isdir(d)]


# The CPU kernels are compiled once per instruction set, each file with its own flags (setuptools has no
# per-file flags, hence CpuIsaBuildExtension below); kernel_choice.cpp picks one at run time.
# Order matters: the linker keeps the first copy of an inline function that several objects define, so
# the baseline object comes first and no AVX instruction leaks into code that runs on any CPU.
CPU_ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    # -mavx512bf16 only for vec_math.h's bf16 stores, which check the CPU for it at run time first.
    "avx512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-mavx512bf16",
    ],
}


def _isa_source(isa):
    return os.path.join("csrc", "cpu", f"kernels_{isa}.cpp")


class CpuIsaBuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus the per-ISA kernel objects of fused_ce._C compiled first with their own flags."""

    def build_extensions(self):
        for ext in self.extensions:
            if ext.name != MAIN_EXTENSION:
                continue
            cflags = (
                ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
            )
            jobs = max(1, int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))

            def compile_one(isa, ext=ext, cflags=cflags):
                return self.compiler.compile(
                    [_isa_source(isa)],
                    output_dir=os.path.join(self.build_temp, "isa"),
                    include_dirs=ext.include_dirs + cpp_extension.include_paths(),
                    extra_postargs=cflags
                    + [ISA_CXX_STD]
                    + CPU_ISA_FLAGS[isa]
                    + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"],
                )

            with ThreadPoolExecutor(jobs) as pool:
                objects = list(pool.map(compile_one, CPU_ISA_FLAGS))
            ext.extra_objects = [o for objs in objects for o in objs] + list(ext.extra_objects or [])
        super().build_extensions()


MAIN_EXTENSION = "fused_ce._C"
EMULATED_EXTENSION = "fused_ce._C_emulated_cuda"
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _emulated_mode():
    mode = os.environ.get("FUSED_CE_EMULATED_CUDA", "0").strip()
    if mode not in ("0", "1", "asan"):
        sys.exit(f"FUSED_CE_EMULATED_CUDA must be 0, 1 or asan, got {mode!r}")
    return mode


def emulated_cuda_extension(sanitize):
    """csrc/cuda compiled unchanged by the host compiler against the emulator (csrc/cuda_emulation): its stand-in
    CUDA headers come first on the include path, and every kernel runs on the CPU."""
    sources = _rel(glob.glob(os.path.join(CSRC, "cuda_emulation", "*.cpp")))
    opt = ["-O1", "-g"] + SANITIZER_FLAGS if sanitize else (["-O0", "-g"] if DEBUG else ["-O2"] + NO_DEBUG_INFO)
    return cpp_extension.CppExtension(
        EMULATED_EXTENSION,
        sources,
        include_dirs=[os.path.join(CSRC, "cuda_emulation", "include"), CSRC],
        # #pragma unroll is nvcc's; the host compiler would warn at every one.
        extra_compile_args={"cxx": opt + ["-fvisibility=hidden", "-DFUSED_CE_EMULATED_CUDA", "-Wno-unknown-pragmas"]},
        extra_link_args=SANITIZER_FLAGS if sanitize else [],
        py_limited_api=True,
    )


def get_extensions():
    emulated = _emulated_mode()
    if emulated == "asan":
        print("fused_ce: building only the emulated CUDA extension, with AddressSanitizer and UBSan")
        return [emulated_cuda_extension(sanitize=True)]
    use_cuda = _want_cuda()
    BUILD["cuda_kernels"] = use_cuda
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    # -fopenmp: at::parallel_for is inline and runs serially unless the extension itself is built with
    # OpenMP (torch's CPU build uses OpenMP; its runtime is already loaded with torch).
    # No -std here: torch's builder adds the standard its headers need.
    cxx_flags = opt + NO_DEBUG_INFO + ["-fvisibility=hidden", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
    isa_sources = {_isa_source(isa) for isa in CPU_ISA_FLAGS}
    sources = [
        s
        for s in _rel(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
        if s not in isa_sources
    ]
    include_dirs = [CSRC]
    extra = {"cxx": cxx_flags}
    ext_cls = cpp_extension.CppExtension
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        BUILD["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
        BUILD["cuda_toolkit"] = _toolkit_cuda_version()
        print(f"fused_ce: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        sources += _rel(glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        include_dirs += _pip_cuda_include_dirs()
        extra["cxx"] = extra["cxx"] + ["-DFUSED_CE_WITH_CUDA"]
        extra["nvcc"] = opt + ["-DFUSED_CE_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        print("fused_ce: building the CPU kernels only (no CUDA toolkit or CPU-only torch, or USE_CUDA=0)")
    print(f"fused_ce: MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}")
    extensions = [
        ext_cls(
            MAIN_EXTENSION,
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]
    if emulated == "1":
        print("fused_ce: also building the emulated CUDA extension (FUSED_CE_EMULATED_CUDA=1)")
        extensions.append(emulated_cuda_extension(sanitize=False))
    return extensions


# What the build was made for, written into the package as fused_ce/_build_info.py (BuildPyWithBuildInfo):
# fused_ce's import compares it with the torch it finds, so a build or wheel made for another torch fails with
# an ImportError that says so, instead of an undefined symbol or a crash.
BUILD = {
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_kernels": False,
    "cuda_toolkit": None,
    "cuda_arch_list": None,
    "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
}


def _base_version():
    with open(os.path.join(ROOT, "python_pkg", "fused_ce", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def torch_label(torch_version, cuda_kernels, toolkit):
    """The local version label of a build: the torch it is for, then cuXYZ (the CUDA kernels' toolkit) or cpu
    (CPU kernels only, usable with a CPU or a CUDA build of that torch): 2.13.0+cpu -> pt2130cpu."""
    release = re.match(r"\d+(\.\d+)*", torch_version).group(0)
    kernels = "cu" + toolkit.replace(".", "") if cuda_kernels else "cpu"
    return "pt" + release.replace(".", "") + kernels


def version():
    """The base version; with FUSED_CE_VERSION_LABEL=1 (scripts/build_wheel.sh) plus the torch label, as
    0.1.0+pt2130cpu, so that wheels for different torch builds have different names. Plain source builds keep
    the base version (a local label is not allowed in an sdist on PyPI)."""
    base = _base_version()
    if os.environ.get("FUSED_CE_VERSION_LABEL", "0") != "1":
        return base
    return f"{base}+{torch_label(BUILD['torch'], BUILD['cuda_kernels'], BUILD['cuda_toolkit'] or '')}"


class BuildPyWithBuildInfo(build_py):
    """setuptools' build_py, plus fused_ce/_build_info.py: the versions this build was made with."""

    def run(self):
        super().run()
        path = os.path.join(self.build_lib, "fused_ce", "_build_info.py")
        with open(path, "w") as f:
            f.write('"""Written by setup.py at build time: what this fused_ce was built for."""\n')
            f.write(f"VERSION = {self.distribution.get_version()!r}\n")
            for key, value in BUILD.items():
                f.write(f"{key.upper()} = {value!r}\n")


EXTENSIONS = get_extensions()

setup(
    version=version(),
    packages=find_packages("python_pkg", include=["fused_ce", "fused_ce.*"]),
    package_dir={"": "python_pkg"},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": CpuIsaBuildExtension, "build_py": BuildPyWithBuildInfo},
    options={
        "bdist_wheel": {"py_limited_api": "cp39"},
        "build": {"build_base": os.environ.get("FUSED_CE_BUILD_BASE", "build")},
    },
)
