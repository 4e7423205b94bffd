"""The CPU instruction sets fused_ce's kernels are built for, which of them this CPU runs, and which one
the kernels use now, worked out as csrc/cpu/kernel_choice.cpp does (from the CPU's flags and
FUSED_CE_CPU_CAPABILITY, which is read at every call). setup.py compiles the kernels once per instruction
set, always all three.
"""

import os

ALL_ISAS = ["default", "avx2", "avx512"]
# The bytes of one at::vec vector under each build: its lane count decides where the kernels' blocks end.
VECTOR_BYTES = {"default": 32, "avx2": 32, "avx512": 64}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
SUPPORTED = {
    "default": True,
    "avx2": {"avx2", "fma"} <= FLAGS,
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= FLAGS,
}
SUPPORTED_ISAS = [isa for isa in ALL_ISAS if SUPPORTED[isa]]


def chosen_isa():
    """The instruction set the CPU kernels run now: FUSED_CE_CPU_CAPABILITY when set, else the best one
    this CPU supports (an unsupported or unknown value makes the kernels raise; it is returned as given)."""
    return os.environ.get("FUSED_CE_CPU_CAPABILITY") or SUPPORTED_ISAS[-1]
