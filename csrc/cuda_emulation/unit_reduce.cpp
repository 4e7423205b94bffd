// Compiles cuda/reduce.cu unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/reduce.cu"
