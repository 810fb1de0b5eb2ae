// libFuzzer entry point: a safetensors weight file (header, tensors, model config).
// The checks live in fuzz_targets.hpp, shared with the [fuzz-regression] unit test.
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)age_fuzz::safetensors_file(std::span<const std::uint8_t>(data, size));
  return 0;
}
