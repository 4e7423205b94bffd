// CUDA_EMULATION_ASAN is defined when AddressSanitizer instruments this build (the sanitized emulated
// extension): the emulator then tells it about fiber switches and shared-memory redzones.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMULATION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMULATION_ASAN 1
#endif
#endif

#if defined(CUDA_EMULATION_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
