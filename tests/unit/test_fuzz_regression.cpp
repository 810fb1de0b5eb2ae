// Replays every fuzz seed (tests/fuzz/corpus/<target>/) and every input a fuzzer once
// failed on (tests/data/fuzz-regression/<target>/) through the same checks the fuzz
// targets run (tests/fuzz/fuzz_targets.hpp): each input is accepted or rejected with an
// age::Error, never a crash, another exception, or a broken round trip.
#include <catch2/catch.hpp>

#ifdef AGE_HAVE_IO

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "../fuzz/fuzz_targets.hpp"

namespace fs = std::filesystem;
using age_fuzz::Outcome;

namespace {

const fs::path kCorpus = fs::path(AGE_TEST_DATA_DIR) / ".." / "fuzz" / "corpus";
const fs::path kRegressions = fs::path(AGE_TEST_DATA_DIR) / "fuzz-regression";

std::vector<std::uint8_t> bytes_of(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Every file of the target's corpus and regression folders, by name, with its outcome.
template <class Check>
std::map<std::string, Outcome> replay(const std::string& target, Check check) {
  std::vector<fs::path> files;
  for (const fs::path& dir : {kCorpus / target, kRegressions / target}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().filename() != "README.md") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::map<std::string, Outcome> outcomes;
  for (const fs::path& file : files) {
    INFO("input " << file.string());
    const std::vector<std::uint8_t> data = bytes_of(file);
    Outcome outcome = Outcome::Rejected;
    try {
      outcome = check(std::span<const std::uint8_t>(data));
    } catch (const age::Error&) {
      outcome = Outcome::Rejected;  // rejected with a library error: fine
    }
    // Any other exception (PropertyViolation included) escapes and fails the test case.
    outcomes[file.filename().string()] = outcome;
  }
  return outcomes;
}

[[maybe_unused]] int count(const std::map<std::string, Outcome>& outcomes, Outcome o) {
  return static_cast<int>(std::count_if(outcomes.begin(), outcomes.end(), [&](const auto& kv) { return kv.second == o; }));
}

}  // namespace

TEST_CASE("fuzz regression: safetensors weight files", "[fuzz-regression]") {
  const auto outcomes = replay("safetensors", age_fuzz::safetensors_file);
  REQUIRE(outcomes.size() >= 10);
  // The seeds do what their names say: valid models load, broken files stop early.
  CHECK(outcomes.at("tiny_model.safetensors") == Outcome::Loaded);
  CHECK(outcomes.at("model_with_dgu.safetensors") == Outcome::Loaded);
  CHECK(outcomes.at("dtypes.safetensors") == Outcome::Parsed);
  CHECK(outcomes.at("nonfinite.safetensors") == Outcome::Parsed);
  CHECK(outcomes.at("huge_weight.safetensors") == Outcome::Parsed);  // refused as a model (1e30 weight)
  for (const char* bad : {"truncated.safetensors", "huge_length.safetensors", "duplicate_key.safetensors",
                          "gap.safetensors", "overlap.safetensors", "int_dtype.safetensors", "not_object.safetensors",
                          "deep.safetensors", "metadata_number.safetensors", "shape_overflow.safetensors",
                          "nul_after_header.safetensors"}) {
    INFO(bad);
    CHECK(outcomes.at(bad) == Outcome::Rejected);
  }
}

TEST_CASE("fuzz regression: safetensors header and buffer with the length field computed", "[fuzz-regression]") {
  const auto outcomes = replay("safetensors_parts", age_fuzz::safetensors_parts);
  REQUIRE(outcomes.size() >= 4);
  CHECK(outcomes.at("model_with_dgu.parts") == Outcome::Loaded);
  CHECK(outcomes.at("dtypes.parts") == Outcome::Parsed);
  CHECK(outcomes.at("header_only.parts") == Outcome::Parsed);
}

TEST_CASE("fuzz regression: model config JSON", "[fuzz-regression]") {
  const auto outcomes = replay("model_config", age_fuzz::model_config);
  REQUIRE(outcomes.size() >= 5);
  CHECK(outcomes.at("mixed.json") == Outcome::Loaded);
  CHECK(outcomes.at("minimal.json") == Outcome::Loaded);
  for (const char* bad : {"wrong_version.json", "dense_with_rows.json", "duplicate_field.json", "no_item.json",
                          "nul_then_garbage.json"}) {
    INFO(bad);
    CHECK(outcomes.at(bad) == Outcome::Rejected);
  }
  // Valid but too large for the harness to build (2^31 - 1 rows): parsed, not allocated.
  CHECK(outcomes.at("huge_dim.json") != Outcome::Loaded);
}

TEST_CASE("fuzz regression: Open Bandit Dataset CSV files", "[fuzz-regression]") {
  const auto outcomes = replay("obd_csv", age_fuzz::obd_csv);
  REQUIRE(outcomes.size() >= 10);
  // Records read (strictly or with bad rows skipped), from the default items or the input's.
  for (const char* good : {"log_only.csv", "log_no_affinity.csv", "crlf_blank.csv", "skip_mixed.csv",
                           "columns_reordered.csv", "items_and_log.csv"}) {
    INFO(good);
    CHECK(outcomes.at(good) == Outcome::Loaded);
  }
  if (outcomes.count("real_random.csv")) CHECK(outcomes.at("real_random.csv") == Outcome::Loaded);
  // A bad header or item file is refused whatever the options.
  for (const char* bad : {"feature_gap.csv", "affinity_count.csv", "missing_column.csv", "items_duplicate_id.csv",
                          "items_id_range.csv", "items_empty.csv"}) {
    INFO(bad);
    CHECK(outcomes.at(bad) == Outcome::Rejected);
  }
  // Regressions: an affinity of 1e39 (infinite as a float) is a skipped row, not a record.
  CHECK(outcomes.at("affinity_beyond_float.csv") == Outcome::Parsed);
}

TEST_CASE("fuzz regression: served logs, JSON lines and CSV", "[fuzz-regression]") {
  const auto outcomes = replay("served_log", age_fuzz::served_log);
  REQUIRE(outcomes.size() >= 8);
  for (const char* good : {"records.jsonl", "records.csv", "one_line.jsonl", "mixed.jsonl", "unknown_key.jsonl",
                           "csv_features.csv"}) {
    INFO(good);
    CHECK(outcomes.at(good) == Outcome::Loaded);
  }
  // Read, every line or row skipped (csv_bad_rows.csv's one good row is there twice: a
  // position shown twice).
  for (const char* bad : {"bad_values.jsonl", "csv_bad_rows.csv", "csv_header_only.csv"}) {
    INFO(bad);
    CHECK(outcomes.at(bad) == Outcome::Parsed);
  }
  // Regressions: each was once a crash (an exception of the JSON library, a stack overflow);
  // now each line or row is a FormatError, skipped with skip_bad_rows.
  for (const char* fixed : {"json_number_overflow.jsonl", "csv_policy_invalid_utf8.csv", "deep_nesting_in_message.jsonl"}) {
    INFO(fixed);
    CHECK(outcomes.count(fixed) == 1);
  }
  CHECK(outcomes.at("deep_nesting_in_message.jsonl") == Outcome::Parsed);
}

#ifdef AGE_FUZZ_HAVE_R6B

TEST_CASE("fuzz regression: R6B log lines", "[fuzz-regression]") {
  const auto outcomes = replay("r6b_line", age_fuzz::r6b_line);
  REQUIRE(outcomes.size() >= 5);
  CHECK(outcomes.at("valid.txt") == Outcome::Parsed);
  CHECK(outcomes.at("tabs_crlf.txt") == Outcome::Parsed);
  CHECK(outcomes.at("bad_click.txt") == Outcome::Rejected);
  CHECK(outcomes.at("empty.txt") == Outcome::Rejected);
  CHECK(count(outcomes, Outcome::Parsed) >= 3);
}

#ifdef AGE_FUZZ_WITH_ZLIB
TEST_CASE("fuzz regression: R6B log files", "[fuzz-regression]") {
  const auto outcomes = replay("r6b_file", age_fuzz::r6b_file);
  REQUIRE(outcomes.size() >= 4);
  CHECK(outcomes.at("plain.txt") == Outcome::Parsed);
  CHECK(outcomes.at("gzip_two_members.gz") == Outcome::Parsed);
  CHECK(outcomes.at("gzip_trailing_text.gz") == Outcome::Parsed);  // its member's lines, then a FormatError
  CHECK(count(outcomes, Outcome::Parsed) >= 3);
}
#else
TEST_CASE("fuzz regression: R6B log files", "[fuzz-regression]") {
  WARN("skipped: this test binary is not linked with zlib (define AGE_HAVE_ZLIB when it is), R6B files not replayed");
}
#endif

#endif  // AGE_FUZZ_HAVE_R6B

#else

TEST_CASE("fuzz regression needs the io headers", "[fuzz-regression]") {
  WARN("skipped: nlohmann_json not found, fuzz corpus not replayed");
}

#endif
