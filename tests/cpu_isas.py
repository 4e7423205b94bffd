"""The CPU instruction sets fused_ce's kernels are built for and which of them this CPU runs (conftest.py's
`isa_device` fixture runs a test once per instruction set, and once on every other device).

The kernels are compiled three times (default, AVX2, AVX-512); FUSED_CE_CPU_CAPABILITY picks one and is
read at every call (csrc/cpu/kernel_choice.cpp), so one process can run them all in turn.
"""

from fused_ce._core.cpu_isas import ALL_ISAS, SUPPORTED, SUPPORTED_ISAS, VECTOR_BYTES  # noqa: F401  (tests import them)
