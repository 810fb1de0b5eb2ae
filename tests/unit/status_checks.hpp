// The check that a non-throwing call failed with the expected code and a message naming
// what was wrong.
#pragma once

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "age/core/status.hpp"

namespace age_test {

inline void require_status(const age::Status& s, age::StatusCode code, const std::vector<std::string>& parts) {
  INFO("status message: " << s.message());
  REQUIRE_FALSE(s.ok());
  REQUIRE(s.code() == code);
  for (const std::string& p : parts) REQUIRE_THAT(std::string(s.message()), Catch::Contains(p));
}

}  // namespace age_test
