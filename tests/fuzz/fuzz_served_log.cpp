// libFuzzer entry point: a served log, read as JSON lines and as CSV.
// The checks live in fuzz_targets.hpp, shared with the [fuzz-regression] unit test.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)age_fuzz::served_log(std::span<const std::uint8_t>(data, size));
  return 0;
}
