// Compiles cuda/ce_kernels.cu unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/ce_kernels.cu"
