// The BLAS behind libblas.so.3, for the benchmarks that hand products to it (age_bench_blas,
// the libtorch peer): when it is OpenBLAS, set it to one thread per caller (so that one
// benchmark thread is one core) and describe it; an empty string when it is not OpenBLAS
// (e.g. the reference BLAS). Looked up with dlsym, so nothing links OpenBLAS by name.
#pragma once

#include <dlfcn.h>

#include <string>

namespace age::bench {

inline std::string openblas_one_thread() {
  using Config = char* (*)();
  using SetThreads = void (*)(int);
  auto* config = reinterpret_cast<Config>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  auto* corename = reinterpret_cast<Config>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  auto* set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!config || !set_threads) return {};
  set_threads(1);
  std::string d = config();
  if (corename) d += std::string(", core ") + corename();
  return d + ", 1 thread";
}

}  // namespace age::bench
