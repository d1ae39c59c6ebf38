// A spin-wait's pause, shared by the kernels whose threads wait on an atomic counter
// (mf_sgd.cc, ials_cg.cc): the CPU's pause hint, and a yield every 64 spins.
#pragma once

#include <thread>

namespace recsys_kernels {

inline void relax(int& spins) {
  if (++spins % 64 == 0) {
    std::this_thread::yield();
  } else {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
}

}  // namespace recsys_kernels
