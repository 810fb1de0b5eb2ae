// libFuzzer entry point: a safetensors weight file given as header, NUL byte, data
// buffer (the harness writes the length field).
// The checks live in fuzz_targets.hpp, shared with the [fuzz-regression] unit test.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)age_fuzz::safetensors_parts(std::span<const std::uint8_t>(data, size));
  return 0;
}
