"""Build of the fused_ce extension.

CPU kernels always build. CUDA kernels build whenever a CUDA toolkit and a CUDA build of torch are present,
whether or not a GPU is visible (so a GPU-less CI machine compiles every CUDA line). Environment:
  USE_CUDA=0|1          force a CPU-only build, or require the CUDA build (default: auto-detect)
  TORCH_CUDA_ARCH_LIST  CUDA archs, e.g. "9.0" (default "8.0;9.0+PTX")
  MAX_JOBS              parallel compile jobs (read by torch's ninja builder)
  DEBUG=1               -O0 -g
  FUSED_CE_BUILD_BASE   build folder (default "build"), so CPU-only and CUDA builds can live side by side
"""
import glob
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - exercised only on a machine without torch
    sys.exit(
        "fused_ce needs PyTorch at build time. Install torch first, then build without isolation:\n"
        "    pip install torch && pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEBUG = os.environ.get("DEBUG", "0") == "1"
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


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
        return True
    return toolkit and torch_cuda


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
    "avx512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
               "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
}


def _isa_source(isa):
    return os.path.join("csrc", "cpu", f"kernels_{isa}.cpp")


class CpuIsaBuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus the per-ISA kernel objects compiled first with their own flags."""

    def build_extensions(self):
        for ext in self.extensions:
            cflags = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
            jobs = max(1, int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))

            def compile_one(isa, ext=ext, cflags=cflags):
                return self.compiler.compile(
                    [_isa_source(isa)],
                    output_dir=os.path.join(self.build_temp, "isa"),
                    include_dirs=ext.include_dirs + cpp_extension.include_paths(),
                    extra_postargs=cflags + [ISA_CXX_STD] + CPU_ISA_FLAGS[isa]
                    + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"],
                )

            with ThreadPoolExecutor(jobs) as pool:
                objects = list(pool.map(compile_one, CPU_ISA_FLAGS))
            ext.extra_objects = [o for objs in objects for o in objs] + list(ext.extra_objects or [])
        super().build_extensions()


def get_extensions():
    use_cuda = _want_cuda()
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    # -fopenmp: at::parallel_for is inline and runs serially unless the extension itself is built with
    # OpenMP (torch's CPU build uses OpenMP; its runtime is already loaded with torch).
    # No -std here: torch's builder adds the standard its headers need.
    cxx_flags = opt + ["-fvisibility=hidden", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
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
        print(f"fused_ce: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        sources += _rel(glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cpp")))
        include_dirs += _pip_cuda_include_dirs()
        extra["cxx"] = extra["cxx"] + ["-DFUSED_CE_WITH_CUDA"]
        extra["nvcc"] = opt + ["-DFUSED_CE_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        print("fused_ce: building the CPU kernels only (no CUDA toolkit or CPU-only torch, or USE_CUDA=0)")
    print(f"fused_ce: MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}")
    return [
        ext_cls(
            "fused_ce._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


setup(
    packages=["fused_ce"],
    package_dir={"": "python_pkg"},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": CpuIsaBuildExtension},
    options={
        "bdist_wheel": {"py_limited_api": "cp39"},
        "build": {"build_base": os.environ.get("FUSED_CE_BUILD_BASE", "build")},
    },
)
