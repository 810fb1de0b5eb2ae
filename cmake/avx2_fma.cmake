# Whether the compiler takes -mavx2 -mfma and this machine runs what it builds with them:
# sets AGE_HAVE_AVX2_FMA (cached, so the probe runs once per build tree). age-replay is
# built with the flags when it is true, and the product kernel's test gets an AVX2 build.
include(CheckCXXSourceRuns)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set(CMAKE_REQUIRED_FLAGS "-mavx2 -mfma")
  check_cxx_source_runs("#include <immintrin.h>
    int main() { __m256 a = _mm256_set1_ps(1.f); a = _mm256_fmadd_ps(a, a, a); return _mm256_cvtss_f32(a) == 2.f ? 0 : 1; }"
    AGE_HAVE_AVX2_FMA)
  unset(CMAKE_REQUIRED_FLAGS)
endif()
