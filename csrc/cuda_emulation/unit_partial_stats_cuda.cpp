// Compiles cuda/partial_stats_cuda.cpp unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/partial_stats_cuda.cpp"
