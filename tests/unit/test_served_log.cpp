// The logging record of served requests (age/explore/served_record.hpp) and its two file
// forms, CSV and JSON lines (age/io/served_log.hpp, with age::io): building a record from a
// scored request and its propensities, golden text, round trips, the offline fill of
// deferred propensities, and bad input named by file and line (or skipped and counted).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "age/explore/ablation.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/propensity.hpp"
#include "age/explore/served_record.hpp"
#include "age/model/tower.hpp"
#if AGE_HAVE_IO
#include "age/io/served_log.hpp"
#endif

using namespace age;

namespace {

bool same_number(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

void require_same(const ServedRecord& a, const ServedRecord& b) {
  CHECK(a.request_id == b.request_id);
  CHECK(a.seed == b.seed);
  CHECK(a.policy == b.policy);
  CHECK(a.method == b.method);
  CHECK(a.draws == b.draws);
  CHECK(a.candidates == b.candidates);
  REQUIRE(a.shown.size() == b.shown.size());
  for (std::size_t k = 0; k < a.shown.size(); ++k) {
    CHECK(a.shown[k].position == b.shown[k].position);
    CHECK(a.shown[k].candidate == b.shown[k].candidate);
    CHECK(a.shown[k].item == b.shown[k].item);
    CHECK(same_number(a.shown[k].propensity, b.shown[k].propensity));
    CHECK(same_number(a.shown[k].propensity_se, b.shown[k].propensity_se));
    CHECK(same_number(a.shown[k].reward, b.shown[k].reward));
  }
  CHECK(a.base == b.base);
  CHECK(a.delta == b.delta);
  CHECK(a.gate == b.gate);
  CHECK(a.explored == b.explored);
  REQUIRE(a.user.size() == b.user.size());
  for (std::size_t f = 0; f < a.user.size(); ++f) {
    CHECK(a.user[f].ids == b.user[f].ids);
    CHECK(a.user[f].values == b.user[f].values);
  }
  REQUIRE(a.candidate_features.size() == b.candidate_features.size());
  for (std::size_t c = 0; c < a.candidate_features.size(); ++c) {
    REQUIRE(a.candidate_features[c].size() == b.candidate_features[c].size());
    for (std::size_t f = 0; f < a.candidate_features[c].size(); ++f) {
      CHECK(a.candidate_features[c][f].ids == b.candidate_features[c][f].ids);
      CHECK(a.candidate_features[c][f].values == b.candidate_features[c][f].values);
    }
  }
}

// A hand-made record: 3 candidates, 2 shown, exact propensities, rewards joined, features.
ServedRecord small_record() {
  ServedRecord r;
  r.request_id = 17;
  r.seed = 5;
  r.policy = "epsilon-greedy";
  r.method = PropensityMethod::exact;
  r.candidates = {10, 11, 12};
  r.shown = {ShownItem{.position = 1, .candidate = 2, .item = 12, .propensity = 0.75, .reward = 1},
             ShownItem{.position = 2, .candidate = 0, .item = 10, .propensity = 0.125, .reward = 0}};
  r.base = {0.25f, 0.5f, 0.125f};
  r.delta = {0, 0, 2};
  r.gate = {0, 0, 1};
  r.explored = {0.25f, 0.5f, 2.125f};
  r.user = {FieldInput{{3, 7}, {}}, FieldInput{{}, {0.5f, -1.0f}}};
  r.candidate_features = {{FieldInput{{10}, {}}}, {FieldInput{{11}, {}}}, {FieldInput{{12}, {}}}};
  return r;
}

const std::string kSmallCsv =
    std::string(kServedCsvHeader) +
    "\n"
    "17,5,epsilon-greedy,exact,0,1,2,12,0.75,0,1,10 11 12,0.25 0.5 0.125,0 0 2,0 0 1,0.25 0.5 2.125,3 7;=0.5 -1;,"
    "10;|11;|12;|\n"
    "17,5,epsilon-greedy,exact,0,2,0,10,0.125,0,0,10 11 12,0.25 0.5 0.125,0 0 2,0 0 1,0.25 0.5 2.125,3 7;=0.5 -1;,"
    "10;|11;|12;|\n";

std::filesystem::path write_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::path(AGE_TEST_BINARY_DIR) / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string csv_of(const std::vector<ServedRecord>& records) {
  std::ostringstream out;
  ServedCsvWriter w(out);
  for (const ServedRecord& r : records) w.write(r);
  return out.str();
}

Tower make_tower(std::uint64_t seed) {
  Tower t(4, 6, {16, 8});
  Rng rng(seed);
  t.initialize(rng);
  return t;
}

}  // namespace

TEST_CASE("a served record from a scored request and its propensities", "[served_log]") {
  const Tower t = make_tower(3);
  Rng rng(1);
  Matrix user(4, 1), items(6, 5);
  for (Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<Scalar>(rng.normal());
  for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
  const std::vector<std::uint64_t> ids{100, 101, 102, 103, 104};
  const EpsilonGreedy<Tower> policy(t, {.epsilon = 0.5, .seed = 4});
  const Request request{user, items, 9};
  EpsilonGreedy<Tower>::Workspace ws;
  ScoredRequest out;
  policy.score(request, out, ws);
  PropensityWorkspace pws;
  Propensities props;
  compute_propensities(policy, request, out, {.positions = 3}, ws, pws, props);
  const ServedRecord r = make_served_record("epsilon-greedy", 4, request, out, ids, 3, &props);
  CHECK(r.request_id == 9);
  CHECK(r.seed == 4);
  CHECK(r.method == PropensityMethod::exact);
  REQUIRE(r.shown.size() == 3);
  for (std::size_t k = 0; k < 3; ++k) {
    const Index c = out.ranking[k];
    CHECK(r.shown[k].position == k + 1);
    CHECK(r.shown[k].candidate == static_cast<std::uint64_t>(c));
    CHECK(r.shown[k].item == ids[static_cast<std::size_t>(c)]);
    CHECK(r.shown[k].propensity == props.logged(c, static_cast<Index>(k)));
    CHECK(r.shown[k].propensity > 0);
    CHECK(std::isnan(r.shown[k].reward));
  }
  CHECK(r.explored[static_cast<std::size_t>(out.ranking[0])] == out.explored[out.ranking[0]]);
  CHECK(r.gate.size() == 5);
  // Without propensities the record is deferred; more positions than N are clipped.
  const ServedRecord d = make_served_record("epsilon-greedy", 4, request, out, ids, 9, nullptr);
  CHECK(d.method == PropensityMethod::deferred);
  CHECK(d.shown.size() == 5);
  CHECK(std::isnan(d.shown[0].propensity));
  // Mismatched inputs are named.
  CHECK_THROWS_WITH(make_served_record("p", 0, request, out, std::vector<std::uint64_t>{1, 2}, 1, &props),
                    Catch::Contains("served record: item ids (candidates of the request): expected 5, got 2"));
  CHECK_THROWS_WITH(make_served_record("p", 0, request, out, ids, 4, &props),
                    Catch::Contains("propensities (positions shown): expected 4, got 3"));
  CHECK_THROWS_WITH(make_served_record("a,b", 0, request, out, ids, 1, &props), Catch::Contains("policy: expected"));
  CHECK_THROWS_AS(make_served_record("p", 0, request, out, ids, 0, &props), ConfigError);
}

TEST_CASE("served log CSV: golden text and round trip", "[served_log]") {
  CHECK(csv_of({small_record()}) == kSmallCsv);
  const ServedLog log = read_served_csv(write_file("served_small.csv", kSmallCsv));
  REQUIRE(log.records.size() == 1);
  require_same(log.records[0], small_record());

  // A deferred record without breakdown or features, next to the full one.
  ServedRecord deferred;
  deferred.request_id = 18;
  deferred.policy = "age-ts";
  deferred.candidates = {4, 5};
  deferred.shown = {ShownItem{.position = 1, .candidate = 1, .item = 5}};
  const ServedLog two = read_served_csv(write_file("served_two.csv", csv_of({small_record(), deferred})));
  REQUIRE(two.records.size() == 2);
  require_same(two.records[1], deferred);
}

TEST_CASE("served records: a deferred propensity filled offline from the logged id and seed", "[served_log]") {
  const Tower t = make_tower(5);
  Rng rng(2);
  Matrix user(4, 1), items(6, 4);
  for (Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<Scalar>(rng.normal());
  for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
  const std::vector<std::uint64_t> ids{1, 2, 3, 4};
  AgeSettings s;
  s.lambda = 30;
  s.dropout_rate = 0.3;
  s.seed = 12;
  const PropensityOptions opts{.positions = 2, .draws = 64};
  // Serving: log now with Monte-Carlo propensities, and once deferred.
  const auto serving = age_ts_without_gate(t, s);
  const Request request{user, items, 33};
  const ScoredRequest out = serving.score(request);
  const Propensities now = compute_propensities(serving, request, opts);
  const ServedRecord logged = make_served_record("age-ts", s.seed, request, out, ids, 2, &now);
  ServedRecord deferred = make_served_record("age-ts", s.seed, request, out, ids, 2, nullptr);
  // Offline: the policy rebuilt from the record's seed, the request from its id.
  AgeSettings again = s;
  again.seed = deferred.seed;
  const auto rebuilt = age_ts_without_gate(t, again);
  fill_propensities(deferred, compute_propensities(rebuilt, Request{user, items, deferred.request_id}, opts));
  require_same(deferred, logged);
  CHECK(deferred.method == PropensityMethod::monte_carlo);
  CHECK_THROWS_AS(fill_propensities(deferred, compute_propensities(rebuilt, request, {.positions = 1, .draws = 4})),
                  DimensionError);
}

TEST_CASE("served log CSV: bad rows are named by file and line, or skipped and counted", "[served_log][validation]") {
  const std::string row = "17,5,p,exact,0,1,2,12,0.75,0,1,10 11 12,,,,,,\n";
  auto fails_with = [&](const std::string& bad, const std::string& message) {
    const auto path = write_file("served_bad.csv", std::string(kServedCsvHeader) + "\n" + row + bad);
    INFO(bad);
    CHECK_THROWS_WITH(read_served_csv(path), Catch::Contains(path.string() + ":3: " + message));
    CHECK_THROWS_AS(read_served_csv(path), FormatError);
  };
  fails_with("18,5,p,exact,0,1,2,12,0,0,1,10 11 12,,,,,,\n", "propensity: expected a value in (0, 1], got 0");
  fails_with("18,5,p,exact,0,1,2,12,,0,1,10 11 12,,,,,,\n", "propensity: expected a value in (0, 1], got missing");
  fails_with("18,5,p,exact,0,1,2,99,0.5,0,1,10 11 12,,,,,,\n", "item: expected one of the request's candidates, got 99");
  fails_with("18,5,p,exact,0,1,1,12,0.5,0,1,10 11 12,,,,,,\n", "item: expected candidates[1] = 11, got 12");
  fails_with("18,5,p,exact,0,1\n", "row: expected 18 comma-separated fields, got 6");
  fails_with("18,5,p,exact,0,1,2,12,0.5,0,x,10 11 12,,,,,,\n", "column 'reward': expected a finite number, got 'x'");
  fails_with("18,5,p,often,0,1,2,12,0.5,0,1,10 11 12,,,,,,\n", "column 'propensity_method'");
  // The same position twice in one request: named at the request's first line.
  const auto twice = write_file("served_twice.csv", std::string(kServedCsvHeader) + "\n" + row + row);
  CHECK_THROWS_WITH(read_served_csv(twice), Catch::Contains(":2: shown[1].position: expected each position once"));
  CHECK_THROWS_WITH(read_served_csv(write_file("served_head.csv", "request_id,seed\n")),
                    Catch::Contains(":1: header: expected 'request_id,seed,policy"));
  CHECK_THROWS_AS(read_served_csv("/nonexistent/served.csv"), IoError);

  const auto mixed = write_file("served_mixed.csv", std::string(kServedCsvHeader) + "\n" + row +
                                                        "18,5,p,exact,0,1,2,12,0,0,1,10 11 12,,,,,,\n" +
                                                        "19,5,p,exact,0,1,0,10,0.5,0,0,10 11 12,,,,,,\n");
  const ServedLog log = read_served_csv(mixed, {.skip_bad_rows = true});
  CHECK(log.records.size() == 2);
  CHECK(log.skipped == 1);
  CHECK_THAT(log.first_error, Catch::Contains(":3: propensity"));
}

TEST_CASE("served records: large records are checked in one pass, naming the first problem",
          "[served_log][validation]") {
  // 100000 candidates, all shown: the checks do not compare shown items pairwise.
  constexpr std::size_t kLarge = 100000;
  ServedRecord r;
  r.request_id = 3;
  r.policy = "p";
  r.method = PropensityMethod::deferred;
  for (std::size_t j = 0; j < kLarge; ++j) {
    r.candidates.push_back(1000 + j);
    r.shown.push_back(ShownItem{.position = static_cast<std::uint32_t>(j + 1), .candidate = kLarge - 1 - j,
                                .item = 1000 + kLarge - 1 - j});
  }
  CHECK(served_record_problem(r) == "");

  // Two repeats: the one at the smaller index is named.
  ServedRecord twice = r;
  twice.shown[90000].position = twice.shown[10].position;
  twice.shown[70000].position = twice.shown[40000].position;
  CHECK(served_record_problem(twice) == "shown[70000].position: expected each position once, got 40001 again");
  // A position three times: its second occurrence is the repeat.
  ServedRecord thrice = r;
  thrice.shown[9].position = thrice.shown[5].position = thrice.shown[2].position;
  CHECK(served_record_problem(thrice) == "shown[5].position: expected each position once, got 3 again");
  // An earlier bad item comes first; each kind of bad item keeps its message.
  thrice.shown[4].item = 7;
  CHECK(served_record_problem(thrice) == "shown[4].item: expected one of the request's candidates, got 7");
  thrice.shown[4].item = 1000;
  CHECK(served_record_problem(thrice) == "shown[4].item: expected candidates[99995] = 100995, got 1000");
  thrice.shown[4].candidate = kLarge;
  CHECK(served_record_problem(thrice) == "shown[4].candidate: expected an index < 100000, got 100000");

  // The CSV form: one request shown in 50000 rows (slots), read as one record.
  std::string text = std::string(kServedCsvHeader) + "\n";
  constexpr std::size_t kRows = 50000;
  for (std::size_t j = 0; j < kRows; ++j)
    text += "9,1,p,deferred,0," + std::to_string(j + 1) + "," + std::to_string(j % 3) + "," +
            std::to_string(10 + j % 3) + ",,0,,10 11 12,,,,,,\n";
  const ServedLog read = read_served_csv(write_file("served_large.csv", text));
  REQUIRE(read.records.size() == 1);
  CHECK(read.records[0].shown.size() == kRows);
  CHECK(read.records[0].shown.back().position == kRows);
  CHECK(read.records[0].shown.back().item == 10 + (kRows - 1) % 3);
}

TEST_CASE("served records: a policy name that is not UTF-8 is refused, in a record and in a CSV log",
          "[served_log][validation]") {
  // The JSON form cannot hold such a name: accepting it would hand out records that
  // served_record_json cannot write.
  ServedRecord r = small_record();
  // A stray byte, an overlong '/', a surrogate, above U+10FFFF, a cut sequence.
  for (const char* bad : {"age\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\xe2\x82"}) {
    INFO(bad);
    r.policy = bad;
    CHECK_THAT(served_record_problem(r), Catch::Contains("policy: expected UTF-8 text"));
    CHECK_THROWS_AS(check_served_record(r), InputError);
  }
  for (const char* good : {"caf\xc3\xa9", "\xe2\x82\xac-greedy", "\xf0\x9f\x8e\xb2 ts", "\xf4\x8f\xbf\xbf"}) {
    INFO(good);
    r.policy = good;
    CHECK(served_record_problem(r).empty());
  }
  const auto path = write_file("served_utf8.csv", std::string(kServedCsvHeader) + "\n" +
                                                      "17,5,age\x96ts,exact,0,1,2,12,0.75,0,1,10 11 12,,,,,,\n");
  CHECK_THROWS_WITH(read_served_csv(path), Catch::Contains(path.string() + ":2: policy: expected UTF-8 text"));
  CHECK(read_served_csv(path, {.skip_bad_rows = true}).skipped == 1);
}

TEST_CASE("served records: feature values must be finite floats, in a record and in a CSV log",
          "[served_log][validation]") {
  // 1e39 is a finite double but not a float: stored, it would be infinity, which neither
  // form can write back.
  ServedRecord r = small_record();
  r.user[1].values[1] = std::numeric_limits<float>::infinity();
  CHECK_THAT(served_record_problem(r), Catch::Contains("user[1].values[1]: expected a finite value, got inf"));
  r = small_record();
  r.candidate_features[2] = {FieldInput{{}, {std::numeric_limits<float>::quiet_NaN()}}};
  CHECK_THAT(served_record_problem(r), Catch::Contains("candidate_features[2][0].values[0]: expected a finite value"));

  const std::string row = "17,5,p,exact,0,1,2,12,0.75,0,1,10 11 12,,,,,";
  auto read = [&](const std::string& features) {
    return read_served_csv(write_file("served_float.csv", std::string(kServedCsvHeader) + "\n" + row + features + "\n"));
  };
  CHECK_THROWS_WITH(read("=1e39;,"),
                    Catch::Contains("column 'user_features': expected a finite number within float range, got '1e39'"));
  CHECK_THROWS_AS(read("=3.4028236e38;,"), FormatError);
  CHECK_THROWS_WITH(read(",;|;|=-3.5e38;|"), Catch::Contains("column 'candidate_features': expected a finite number "
                                                              "within float range"));
  // The largest float, as the writer writes it (9 digits, a little above it), is kept exactly.
  const ServedLog edge = read("=3.40282347e38 -1e-45;,");
  REQUIRE(edge.records.size() == 1);
  CHECK(edge.records[0].user[0].values == std::vector<float>{std::numeric_limits<float>::max(), -1e-45f});
  // The breakdown columns too (they were refused before, as infinite, by the record's check).
  CHECK_THROWS_WITH(read_served_csv(write_file("served_float.csv", std::string(kServedCsvHeader) + "\n" +
                                                                       "17,5,p,exact,0,1,2,12,0.75,0,1,10 11 12,"
                                                                       "0 0 1e40,0 0 0,0 0 0,0 0 0,,\n")),
                    Catch::Contains("column 'base': expected a finite number within float range"));
}

TEST_CASE("served log CSV: a position of 2^32 or more is refused, not clamped", "[served_log][validation]") {
  const auto path = write_file("served_position.csv", std::string(kServedCsvHeader) + "\n" +
                                                          "17,5,p,exact,0,4294967296,2,12,0.75,0,1,10 11 12,,,,,,\n");
  CHECK_THROWS_WITH(read_served_csv(path), Catch::Contains(":2: column 'position': expected a slot below 2^32, got "
                                                           "'4294967296'"));
  const auto top = write_file("served_position.csv", std::string(kServedCsvHeader) + "\n" +
                                                         "17,5,p,exact,0,4294967295,2,12,0.75,0,1,10 11 12,,,,,,\n");
  REQUIRE(read_served_csv(top).records.size() == 1);
  CHECK(read_served_csv(top).records[0].shown[0].position == 4294967295u);
}

#if AGE_HAVE_IO
TEST_CASE("served log JSON lines: golden text and round trip", "[served_log][io]") {
  const std::string line = served_record_json(small_record());
  CHECK(line ==
        R"({"breakdown":{"base":[0.25,0.5,0.125],"delta":[0.0,0.0,2.0],"explored":[0.25,0.5,2.125],"gate":[0,0,1]},)"
        R"("candidate_features":[[{"ids":[10]}],[{"ids":[11]}],[{"ids":[12]}]],"candidates":[10,11,12],"draws":0,)"
        R"("policy":"epsilon-greedy","propensity_method":"exact","request_id":17,"seed":5,)"
        R"("shown":[{"candidate":2,"item":12,"position":1,"propensity":0.75,"propensity_se":0.0,"reward":1.0},)"
        R"({"candidate":0,"item":10,"position":2,"propensity":0.125,"propensity_se":0.0,"reward":0.0}],)"
        R"("user":[{"ids":[3,7]},{"values":[0.5,-1.0]}]})");
  require_same(served_record_from_json(line), small_record());

  ServedRecord deferred;
  deferred.request_id = 18446744073709551615ULL;  // every 64-bit id survives
  deferred.policy = "age-ts";
  deferred.candidates = {4, 5};
  deferred.shown = {ShownItem{.position = 1, .candidate = 1, .item = 5}};
  std::ostringstream out;
  ServedJsonWriter w(out);
  w.write(small_record());
  w.write(deferred);
  const auto path = write_file("served.jsonl", out.str() + "\n");
  const ServedLog log = read_served_log(path);
  REQUIRE(log.records.size() == 2);
  require_same(log.records[0], small_record());
  require_same(log.records[1], deferred);
  CHECK(log.records[1].request_id == 18446744073709551615ULL);
  // Both forms read back the same records.
  const ServedLog csv = read_served_log(write_file("served_both.csv", csv_of({small_record(), deferred})));
  REQUIRE(csv.records.size() == 2);
  require_same(csv.records[1], log.records[1]);
}

TEST_CASE("served log JSON lines: bad lines are named by file and line, or skipped and counted",
          "[served_log][io][validation]") {
  const std::string good = served_record_json(small_record());
  auto fails_with = [&](std::string bad, const std::string& message) {
    const auto path = write_file("served_bad.jsonl", good + "\n" + bad + "\n");
    INFO(bad);
    CHECK_THROWS_WITH(read_served_jsonl(path), Catch::Contains(path.string() + ":2: " + message));
    CHECK_THROWS_AS(read_served_jsonl(path), FormatError);
  };
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  fails_with(with(R"("propensity":0.75)", R"("propensity":0)"),
             "shown[0].propensity: expected a value in (0, 1], got 0");
  fails_with(with(R"("propensity":0.75)", R"("propensity":null)"),
             "shown[0].propensity: expected a value in (0, 1], got missing");
  fails_with(with(R"("propensity":0.75,)", ""), "field 'shown[0].propensity': expected it, got none");
  fails_with(with(R"("item":12)", R"("item":99)"), "shown[0].item: expected one of the request's candidates, got 99");
  fails_with("{\"request_id\": 3", "expected one JSON object per line, got invalid JSON");
  fails_with(with(R"("seed":5)", R"("seed":-5)"), "field 'seed': expected an unsigned integer, got -5");
  fails_with(with(R"("gate":[0,0,1])", R"("gate":[0,1])"), "breakdown.gate: expected 3 values (one per candidate), got 2");

  const auto mixed = write_file("served_mixed.jsonl", good + "\nnot json\n" + good + "\n");
  const ServedLog log = read_served_jsonl(mixed, {.skip_bad_rows = true});
  CHECK(log.records.size() == 2);
  CHECK(log.skipped == 1);
  CHECK_THAT(log.first_error, Catch::Contains(":2: expected one JSON object per line"));
}

TEST_CASE("served log JSON lines: numbers out of range, deep nesting and bad policies are FormatErrors",
          "[served_log][io][validation]") {
  const std::string good = served_record_json(small_record());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  // A number beyond double's range: the JSON library reports it as out_of_range, not as a
  // parse error; both are invalid JSON to the reader.
  CHECK_THROWS_WITH(served_record_from_json(with(R"("reward":1.0)", R"("reward":1e400)"), "f:3"),
                    Catch::Contains("f:3: expected one JSON object per line, got invalid JSON") &&
                        Catch::Contains("number overflow"));
  CHECK_THROWS_AS(served_record_from_json(with(R"("seed":5)", R"("seed":-1e999)")), FormatError);
  // Beyond float's range where a float is stored.
  CHECK_THROWS_WITH(served_record_from_json(with(R"({"values":[0.5,-1.0]})", R"({"values":[0.5,-1e39]})")),
                    Catch::Contains("field 'user[1].values[1]': expected a number within float range"));
  CHECK_THROWS_WITH(served_record_from_json(with(R"("base":[0.25,)", R"("base":[3.5e38,)")),
                    Catch::Contains("field 'breakdown.base[0]': expected a number within float range"));
  CHECK(served_record_from_json(with(R"({"values":[0.5,-1.0]})", R"({"values":[-3.40282347e38]})"))
            .user[1]
            .values[0] == -std::numeric_limits<float>::max());
  // Nested far deeper than the stack would allow a recursive dump: the message summarises.
  const std::size_t depth = 200000;
  const std::string deep = with(R"("seed":5)", R"("seed":)" + std::string(depth, '[') + std::string(depth, ']'));
  CHECK_THROWS_WITH(served_record_from_json(deep), Catch::Contains("field 'seed': expected an unsigned integer, got "
                                                                   "an array of 1 elements"));
  CHECK_THROWS_WITH(served_record_from_json(R"({"request_id":{"a":1,"b":[]}})"),
                    Catch::Contains("got an object of 2 keys"));
  // A policy that is not UTF-8 cannot be in valid JSON; one written as an escape can.
  CHECK_THROWS_WITH(served_record_from_json(with(R"("policy":"epsilon-greedy")", "\"policy\":\"eps\xff\"")),
                    Catch::Contains("invalid JSON"));
  CHECK(served_record_from_json(with(R"("policy":"epsilon-greedy")", R"("policy":"caf\u00e9")")).policy ==
        "caf\xc3\xa9");
  // The writer refuses what it could not write, with the library's error.
  ServedRecord r = small_record();
  r.policy = "age\x96ts";
  CHECK_THROWS_AS(served_record_json(r), InputError);
  r = small_record();
  r.user[0].values = {std::numeric_limits<float>::infinity()};
  CHECK_THROWS_AS(served_record_json(r), InputError);
}
#endif
