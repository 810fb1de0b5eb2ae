// The Open Bandit Dataset reader (age/sim/obd.hpp) on the real sample shipped in
// examples/data/obd/ (ZOZOTOWN, men campaign), the real-data check of the estimators
// (age/sim/ope.hpp) on it, and the refusal of bad rows with file and line.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "age/sim/obd.hpp"
#include "age/sim/ope.hpp"

using namespace age;
using namespace age::sim;

namespace {

const std::filesystem::path kObd = std::filesystem::path(AGE_TEST_DATA_DIR) / ".." / ".." / "examples" / "data" / "obd" / "men";

ObdLog read_policy(const std::string& policy) {
  return read_obd(kObd / policy / "men.csv", kObd / policy / "item_context.csv");
}

// The uniform random policy's probability of any item at any position, on a log of I items.
std::vector<OpeSample> uniform_target(const ObdLog& log) {
  std::vector<OpeSample> out;
  const double p = 1.0 / static_cast<double>(log.items.size());
  for (const ObdRecord& r : log.records)
    out.push_back(OpeSample{.reward = r.click ? 1.0 : 0.0, .logging_propensity = r.propensity, .target_propensity = p});
  return out;
}

// The Thompson-sampling log's time-averaged policy: per position, the share of its rows that
// show each item (context-free, like Bernoulli TS itself).
std::map<std::pair<std::uint32_t, std::uint32_t>, double> marginal_policy(const ObdLog& bts) {
  std::map<std::pair<std::uint32_t, std::uint32_t>, double> share;
  std::map<std::uint32_t, double> per_position;
  for (const ObdRecord& r : bts.records) {
    share[{r.position, r.item}] += 1;
    per_position[r.position] += 1;
  }
  for (auto& [key, v] : share) v /= per_position[key.first];
  return share;
}

// Adds a constant reward model q = c (so that DR = c + IPS - c mean(w)).
void constant_model(std::vector<OpeSample>& samples, double c) {
  for (OpeSample& s : samples) {
    s.dm_value = c;  // sum_a pi_e(a) c
    s.dm_logged = c;
  }
}

std::filesystem::path write_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::path(AGE_TEST_BINARY_DIR) / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

const char* kItems =
    ",item_id,item_feature_0,item_feature_1\n"
    "0,0,0.5,abc\n"
    "1,1,-1.25,def\n";
const char* kHeader =
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user-item_affinity_0,user-item_affinity_1\n";

}  // namespace

TEST_CASE("OBD: the random log of the men campaign, as its README describes it", "[obd]") {
  const ObdLog log = read_policy("random");
  CHECK(log.records.size() == 10000);
  CHECK(log.clicks() == 46);
  CHECK(log.click_rate() == Approx(0.0046));
  CHECK(log.items.size() == 34);
  CHECK(log.positions == 3);
  CHECK(log.user_feature_names == std::vector<std::string>{"user_feature_0", "user_feature_1", "user_feature_2",
                                                            "user_feature_3"});
  CHECK(log.item_dense_names == std::vector<std::string>{"item_feature_0"});
  CHECK(log.item_categorical_names.size() == 3);
  CHECK(log.skipped == 0);
  // The first data line, as in the file.
  const ObdRecord& r = log.records.front();
  CHECK(r.index == 0);
  CHECK(r.line == 2);
  CHECK(r.timestamp == "2019-11-24 00:03:13.442536+00:00");
  CHECK(r.item == 14);
  CHECK(r.position == 3);
  CHECK_FALSE(r.click);
  CHECK(r.propensity == 0.029411764705882353);
  CHECK(r.user_features.size() == 4);
  CHECK(r.user_features[0] == obd_feature_id("cef3390ed299c09874189c387777674a"));
  CHECK(r.affinity.size() == 34);
  CHECK(log.items[0].dense[0] == -0.6771831139635117);
  CHECK(log.items[33].id == 33);
  for (const ObdRecord& x : log.records) REQUIRE(x.propensity == r.propensity);  // uniform: 1/34
}

TEST_CASE("OBD: the Bernoulli Thompson sampling log", "[obd]") {
  const ObdLog log = read_policy("bts");
  CHECK(log.records.size() == 10000);
  CHECK(log.clicks() == 69);
  CHECK(log.records.front().item == 2);
  CHECK(log.records.front().position == 2);
  CHECK(log.records.front().propensity == 0.045525);
}

TEST_CASE("OBD real-data check: the uniform policy's value from the TS log agrees with the random log's click rate",
          "[obd][ope][real-data]") {
  const ObdLog random = read_policy("random"), bts = read_policy("bts");
  std::vector<OpeSample> samples = uniform_target(bts);
  constant_model(samples, bts.click_rate());
  const OpeReport r = evaluate_off_policy(samples, {.bootstrap = 2000, .seed = 1});
  for (Estimator e : {Estimator::ips, Estimator::snips, Estimator::dr}) {
    INFO(to_string(e) << " " << r[e].value << " [" << r[e].lower << ", " << r[e].upper << "] vs "
                      << random.click_rate());
    CHECK(r[e].lower <= random.click_rate());
    CHECK(random.click_rate() <= r[e].upper);
  }
  CHECK_FALSE(r[Estimator::replay].available);  // the TS log is not uniform
}

TEST_CASE("OBD real-data check: the TS policy's value from the random log agrees with the TS log's click rate",
          "[obd][ope][real-data]") {
  const ObdLog random = read_policy("random"), bts = read_policy("bts");
  const auto policy = marginal_policy(bts);
  std::vector<OpeSample> samples;
  for (const ObdRecord& r : random.records) {
    const auto it = policy.find({r.position, r.item});
    samples.push_back(OpeSample{.reward = r.click ? 1.0 : 0.0,
                                .logging_propensity = r.propensity,
                                .target_propensity = it == policy.end() ? 0.0 : it->second});
  }
  constant_model(samples, random.click_rate());
  const OpeReport r = evaluate_off_policy(samples, {.bootstrap = 2000, .seed = 2});
  for (Estimator e : {Estimator::ips, Estimator::snips, Estimator::dr}) {
    INFO(to_string(e) << " " << r[e].value << " [" << r[e].lower << ", " << r[e].upper << "] vs " << bts.click_rate());
    CHECK(r[e].lower <= bts.click_rate());
    CHECK(bts.click_rate() <= r[e].upper);
  }
}

TEST_CASE("OBD: bad rows are refused with file, line and column, or skipped and counted", "[obd][validation]") {
  const auto items = write_file("obd_items.csv", kItems);
  const std::string good = "0,t,1,1,0,0.5,u1,0.0,1.0\n";
  auto log_with = [&](const std::string& row) { return write_file("obd_log.csv", std::string(kHeader) + good + row); };

  const ObdLog ok = read_obd(log_with("1,t,0,2,1,0.5,u2,2.0,0.0\n"), items);
  CHECK(ok.records.size() == 2);
  CHECK(ok.items[1].dense[0] == -1.25);
  CHECK(ok.items[1].categorical[0] == obd_feature_id("def"));
  CHECK(ok.records[1].affinity[0] == 2.0f);

  const std::string file = log_with("").string();
  auto fails_with = [&](const std::string& row, const std::string& message) {
    const auto path = log_with(row);
    INFO(row);
    CHECK_THROWS_WITH(read_obd(path, items), Catch::Contains(path.string() + ":3: " + message));
    CHECK_THROWS_AS(read_obd(path, items), FormatError);
  };
  fails_with("1,t,0,2,0,0,u2,0,0\n", "column 'propensity_score': expected a value in (0, 1], got '0'");
  fails_with("1,t,0,2,0,,u2,0,0\n", "column 'propensity_score': expected a value in (0, 1], got ''");
  fails_with("1,t,0,2,0,1.5,u2,0,0\n", "column 'propensity_score': expected a value in (0, 1], got '1.5'");
  fails_with("1,t,5,2,0,0.5,u2,0,0\n", "column 'item_id': expected one of the 2 candidate items [0, 2), got '5'");
  fails_with("1,t,0,2,0,0.5\n", "row: expected 9 comma-separated fields, got 6");
  fails_with("1,t,0,0,0,0.5,u2,0,0\n", "column 'position': expected a slot in [1, 1000], got '0'");
  fails_with("1,t,0,1,yes,0.5,u2,0,0\n", "column 'click': expected 0 or 1, got 'yes'");
  fails_with("1,t,0,1,0,0.5,u2,x,0\n", "column 'user-item_affinity_0': expected a finite number, got 'x'");
  fails_with("1,t,0,1,0,0.5,\"u2\",0,0\n", "expected plain comma-separated fields");

  // Skip and count: the good rows are kept, the first error is remembered.
  const auto mixed = write_file("obd_mixed.csv", std::string(kHeader) + good + "1,t,0,2,0,0,u2,0,0\n" + good +
                                                     "3,t,9,1,0,0.5,u,0,0\n");
  const ObdLog skipped = read_obd(mixed, items, {.skip_bad_rows = true});
  CHECK(skipped.records.size() == 2);
  CHECK(skipped.skipped == 2);
  CHECK_THAT(skipped.first_error, Catch::Contains(":3: column 'propensity_score'"));
  CHECK(read_obd(mixed, items, {.skip_bad_rows = true, .max_rows = 1}).records.size() == 1);

  // Header and item-file errors always throw.
  CHECK_THROWS_WITH(read_obd(write_file("obd_nohead.csv", ",timestamp,item_id,position,click\n"), items),
                    Catch::Contains(":1: header: expected a column 'propensity_score', got none"));
  CHECK_THROWS_WITH(read_obd(write_file("obd_aff.csv", std::string(",timestamp,item_id,position,click,propensity_score,"
                                                           "user-item_affinity_0\n")),
                             items),
                    Catch::Contains("expected 2 user-item_affinity_ columns"));
  CHECK_THROWS_WITH(read_obd(file, write_file("obd_items_dup.csv", ",item_id,item_feature_0\n0,0,1\n1,0,2\n")),
                    Catch::Contains("obd_items_dup.csv:3: column 'item_id': expected each item once, got '0'"));
  CHECK_THROWS_AS(read_obd("/nonexistent/men.csv", items), IoError);
}

TEST_CASE("OBD: an affinity beyond float range is refused, not stored as infinity", "[obd][validation]") {
  // Affinities are stored as floats: 1e39 is a finite number but would become infinity.
  const auto items = write_file("obd_items.csv", kItems);
  const auto log_with = [&](const std::string& row) {
    return write_file("obd_float.csv", std::string(kHeader) + "0,t,1,1,0,0.5,u1,0.0,1.0\n" + row);
  };
  const auto path = log_with("1,t,0,2,1,0.5,u2,2.0,1e39\n");
  CHECK_THROWS_WITH(read_obd(path, items),
                    Catch::Contains(path.string() + ":3: column 'user-item_affinity_1': expected a finite number within "
                                                    "float range, got '1e39'"));
  CHECK_THROWS_AS(read_obd(log_with("1,t,0,2,1,0.5,u2,-3.4028236e38,0\n"), items), FormatError);
  const ObdLog skipped = read_obd(path, items, {.skip_bad_rows = true});
  CHECK(skipped.records.size() == 1);
  CHECK(skipped.skipped == 1);
  // The largest float written with 9 digits is still the largest float.
  const ObdLog edge = read_obd(log_with("1,t,0,2,1,0.5,u2,3.40282347e38,-1e-45\n"), items);
  REQUIRE(edge.records.size() == 2);
  CHECK(edge.records[1].affinity[0] == std::numeric_limits<float>::max());
  CHECK(std::isfinite(edge.records[1].affinity[1]));
}

TEST_CASE("OBD: numbered columns are found by number, once each, without gaps, in one pass", "[obd][validation]") {
  const auto items = write_file("obd_items.csv", kItems);
  const std::string head = ",timestamp,item_id,position,click,propensity_score,";
  auto read_with = [&](const std::string& columns, const std::string& row) {
    return read_obd(write_file("obd_numbered.csv", head + columns + "\n0,t,1,1,0,0.5," + row + "\n"), items);
  };
  // Any order: user_feature_1 before user_feature_0 still reads as feature 1.
  const ObdLog swapped = read_with("user-item_affinity_1,user_feature_1,user_feature_0,user-item_affinity_0", "2,b,a,1");
  REQUIRE(swapped.records.size() == 1);
  CHECK(swapped.user_feature_names == std::vector<std::string>{"user_feature_0", "user_feature_1"});
  CHECK(swapped.records[0].user_features == std::vector<std::uint64_t>{obd_feature_id("a"), obd_feature_id("b")});
  CHECK(swapped.records[0].affinity == std::vector<float>{1.0f, 2.0f});

  auto header_fails_with = [&](const std::string& columns, const std::string& message) {
    INFO(columns);
    std::string row = "0";
    for (char c : columns) row += c == ',' ? ",0" : "";
    CHECK_THROWS_WITH(read_with(columns, row), Catch::Contains(":1: header: " + message));
    CHECK_THROWS_AS(read_with(columns, row), FormatError);
  };
  const std::string aff = "user-item_affinity_0,user-item_affinity_1";
  header_fails_with("user_feature_0,user_feature_2," + aff,
                    "expected columns user_feature_0..user_feature_1 numbered without gaps, got 'user_feature_2'");
  header_fails_with("user_feature_0,user_feature_01," + aff,
                    "expected columns user_feature_0..user_feature_1 numbered without gaps, got 'user_feature_01'");
  header_fails_with("user_feature_x,user_feature_0," + aff,
                    "expected columns user_feature_0..user_feature_1 numbered without gaps, got 'user_feature_x'");
  header_fails_with("user_feature_99999999999999999999999," + aff,
                    "expected columns user_feature_0..user_feature_0 numbered without gaps, got "
                    "'user_feature_99999999999999999999999'");
  header_fails_with("user_feature_0,user_feature_1,user_feature_0," + aff,
                    "column 'user_feature_0' appears twice (columns 7 and 9)");
  header_fails_with("user_feature_0,user-item_affinity_1,user-item_affinity_1",
                    "column 'user-item_affinity_1' appears twice (columns 8 and 9)");

  // A very wide header (the numbered columns are matched in one pass over it).
  constexpr std::size_t kWide = 60000;
  std::string columns, row;
  for (std::size_t k = kWide; k-- > 0;) {
    const std::string number = std::to_string(k);
    columns.append("user_feature_").append(number).append(",");
    row.append("f").append(number).append(",");
  }
  const ObdLog wide = read_with(columns + aff, row + "0,0");
  REQUIRE(wide.records.size() == 1);
  REQUIRE(wide.user_feature_names.size() == kWide);
  CHECK(wide.user_feature_names[kWide - 1] == "user_feature_" + std::to_string(kWide - 1));
  CHECK(wide.records[0].user_features[0] == obd_feature_id("f0"));
  CHECK(wide.records[0].user_features[kWide - 1] == obd_feature_id(std::string("f").append(std::to_string(kWide - 1))));
}
