// Compiles cuda/ops_cuda.cpp unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/ops_cuda.cpp"
