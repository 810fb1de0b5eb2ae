// libFuzzer entry point: an Open Bandit Dataset campaign (item file, NUL, log).
// The checks live in fuzz_targets.hpp, shared with the [fuzz-regression] unit test.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)age_fuzz::obd_csv(std::span<const std::uint8_t>(data, size));
  return 0;
}
