// Logged decisions from OBD rows and served logs, and the OBD features of the library's model.
#include "data.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "age/core/error.hpp"

namespace ope {

using age::FieldInput;
using age::SideInput;
using age::sim::ObdLog;
using age::sim::ObdRecord;

age::FeatureLayout obd_layout(const ObdLog& log) {
  age::FeatureLayout layout;
  for (const std::string& name : log.user_feature_names) layout.add_categorical(name, age::Side::User, 1024, 8);
  layout.add_categorical("item_id", age::Side::Item, 4096, 8);
  for (const std::string& name : log.item_dense_names) layout.add_dense(name, age::Side::Item, 1);
  layout.add_dense("affinity", age::Side::Item, 1);
  return layout;
}

namespace {

SideInput item_features(const ObdLog& log, std::size_t item, const ObdRecord& r) {
  SideInput s;
  s.push_back(FieldInput{{static_cast<std::uint64_t>(item)}, {}});
  for (double v : log.items[item].dense) s.push_back(FieldInput{{}, {static_cast<float>(v)}});
  const float affinity = r.affinity.empty() ? 0.0f : r.affinity[item];
  s.push_back(FieldInput{{}, {std::log1p(std::max(affinity, 0.0f))}});
  return s;
}

SideInput user_features(const ObdRecord& r) {
  SideInput s;
  for (std::uint64_t id : r.user_features) s.push_back(FieldInput{{id}, {}});
  return s;
}

}  // namespace

void obd_features(const ObdLog& log, const ObdRecord& r, SideInput& user, std::vector<SideInput>& candidates) {
  user = user_features(r);
  candidates.resize(log.items.size());
  for (std::size_t i = 0; i < log.items.size(); ++i) candidates[i] = item_features(log, i, r);
}

void for_each_obd(const ObdLog& log, RowRange rows, const DecisionFn& fn) {
  std::vector<std::uint64_t> ids(log.items.size());
  std::iota(ids.begin(), ids.end(), std::uint64_t{0});
  SideInput user;
  std::vector<SideInput> candidates;
  for (std::size_t i = rows.begin; i < std::min(rows.end, log.records.size()); ++i) {
    const ObdRecord& r = log.records[i];
    obd_features(log, r, user, candidates);
    Decision d;
    d.id = r.index;
    d.user = &user;
    d.candidates = &candidates;
    d.item_ids = ids;
    d.shown = static_cast<age::Index>(r.item);
    d.position = static_cast<age::Index>(r.position) - 1;
    d.logging_propensity = r.propensity;
    d.reward = r.click ? 1.0 : 0.0;
    fn(d);
  }
}

std::size_t for_each_served(const age::ServedLog& log, const DecisionFn& fn) {
  std::size_t no_reward = 0;
  for (const age::ServedRecord& r : log.records) {
    if (r.method == age::PropensityMethod::deferred)
      throw age::InputError("served record " + std::to_string(r.request_id) +
                            ": propensity: expected a logged value, got deferred (run age-ope fill first)");
    for (const age::ShownItem& s : r.shown) {
      if (std::isnan(s.reward)) {
        ++no_reward;
        continue;
      }
      Decision d;
      d.id = r.request_id;
      d.user = r.has_features() ? &r.user : nullptr;
      d.candidates = r.has_features() ? &r.candidate_features : nullptr;
      d.item_ids = r.candidates;
      d.shown = static_cast<age::Index>(s.candidate);
      d.position = static_cast<age::Index>(s.position) - 1;
      d.logging_propensity = s.propensity;
      d.reward = s.reward;
      fn(d);
    }
  }
  return no_reward;
}

std::vector<age::Sample> obd_samples(const ObdLog& log, RowRange rows) {
  std::vector<age::Sample> out;
  for (std::size_t i = rows.begin; i < std::min(rows.end, log.records.size()); ++i) {
    const ObdRecord& r = log.records[i];
    out.push_back(age::Sample{user_features(r), item_features(log, r.item, r), r.click ? 1.0f : 0.0f});
  }
  return out;
}

age::ServedRecord obd_served_record(const ObdLog& log, const ObdRecord& r, const std::string& policy) {
  age::ServedRecord rec;
  rec.request_id = r.index;
  rec.policy = policy;
  rec.method = age::PropensityMethod::exact;
  rec.candidates.resize(log.items.size());
  std::iota(rec.candidates.begin(), rec.candidates.end(), std::uint64_t{0});
  rec.shown.push_back(age::ShownItem{.position = r.position,
                                     .candidate = r.item,
                                     .item = r.item,
                                     .propensity = r.propensity,
                                     .propensity_se = 0.0,
                                     .reward = r.click ? 1.0 : 0.0});
  obd_features(log, r, rec.user, rec.candidate_features);
  age::check_served_record(rec);
  return rec;
}

}  // namespace ope
