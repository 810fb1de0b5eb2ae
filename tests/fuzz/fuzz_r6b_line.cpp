// libFuzzer entry point: one line of an R6B log.
// The checks live in fuzz_targets.hpp, shared with the [fuzz-regression] unit test.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)age_fuzz::r6b_line(std::span<const std::uint8_t>(data, size));
  return 0;
}
