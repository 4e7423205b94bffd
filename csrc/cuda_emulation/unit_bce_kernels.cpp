// Compiles cuda/bce_kernels.cu unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/bce_kernels.cu"
