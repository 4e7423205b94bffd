// Compiles cuda/linear_ce_tile_cuda.cpp unchanged for the emulator (one translation unit each, as under nvcc).
#include "cuda/linear_ce_tile_cuda.cpp"
