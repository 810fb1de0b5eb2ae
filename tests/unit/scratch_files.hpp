// Scratch files of the I/O tests: a fresh folder below the test binaries' folder, and raw
// bytes written to a path (to build malformed files by hand).
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace age_test {

using Bytes = std::vector<std::uint8_t>;

// AGE_TEST_BINARY_DIR/<group>/<name>, emptied and created.
inline std::filesystem::path fresh_dir(const std::string& group, const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(AGE_TEST_BINARY_DIR) / group / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_bytes(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

}  // namespace age_test
