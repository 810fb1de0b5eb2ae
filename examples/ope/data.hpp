// The logs age-ope reads, as one stream of logged decisions: Open Bandit Dataset rows
// (age/sim/obd.hpp) and served logs (age/io/served_log.hpp). Also the features the
// library's CTR model reads from an OBD row (its layout), and OBD rows as served records.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "age/explore/served_record.hpp"
#include "age/features/layout.hpp"
#include "age/sim/obd.hpp"
#include "age/train/trainer.hpp"
#include "options.hpp"

namespace ope {

// One logged decision with its raw features (the pointers are valid during the callback).
struct Decision {
  std::uint64_t id = 0;                                    // the logged request id
  const age::SideInput* user = nullptr;                    // null: the log has no features
  const std::vector<age::SideInput>* candidates = nullptr;
  std::span<const std::uint64_t> item_ids;                 // the candidates' item ids
  age::Index shown = 0;     // the shown candidate
  age::Index position = 0;  // 0-based slot
  double logging_propensity = 1.0;
  double reward = 0.0;
};

using DecisionFn = std::function<void(const Decision&)>;

// The layout of the library's model on OBD rows (a choice of age-ope, README): user fields
// user_feature_k (categorical, 1024 hash rows x 8); item fields item_id (categorical, 4096
// rows x 8), each numeric item feature (dense, width 1) and the user's affinity to the item
// as log(1 + affinity) (dense, width 1). The hashed categorical item features are left out:
// they are functions of the item id, and the sample's two files hash them differently.
age::FeatureLayout obd_layout(const age::sim::ObdLog& log);

// The user's and every candidate item's features of one OBD row, in obd_layout().
void obd_features(const age::sim::ObdLog& log, const age::sim::ObdRecord& r, age::SideInput& user,
                  std::vector<age::SideInput>& candidates);

// The decisions of the OBD rows in `rows` (every item is a candidate; the shown one at its
// logged position).
void for_each_obd(const age::sim::ObdLog& log, RowRange rows, const DecisionFn& fn);

// The decisions of a served log: one per shown item. Items without a joined reward are
// skipped and counted (the return value); a deferred propensity is an InputError naming
// the request ("fill" it first).
std::size_t for_each_served(const age::ServedLog& log, const DecisionFn& fn);

// Training samples (user, shown item, click) of the OBD rows in `rows`.
std::vector<age::Sample> obd_samples(const age::sim::ObdLog& log, RowRange rows);

// An OBD row as a served record: the logging policy's propensity (exact), its click joined,
// the features of obd_layout().
age::ServedRecord obd_served_record(const age::sim::ObdLog& log, const age::sim::ObdRecord& r,
                                    const std::string& policy);

}  // namespace ope
