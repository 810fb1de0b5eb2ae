// The smallest EmbeddingCtrModel the hardening tests need: one user and one item
// categorical field, a tower 8-4, seeded weights.
#pragma once

#include <cstdint>

#include "age/core/rng.hpp"
#include "age/features/layout.hpp"
#include "age/model/embedding_model.hpp"

namespace age_test {

inline age::FeatureLayout small_layout() {
  age::FeatureLayout layout;
  layout.add_categorical("user_id", age::Side::User, 16, 3).add_categorical("item_id", age::Side::Item, 16, 4);
  return layout;
}

inline age::EmbeddingCtrModel small_model(std::uint64_t seed = 1) {
  age::EmbeddingCtrModel model(small_layout(), {8, 4});
  age::Rng rng(seed);
  model.initialize(rng, 0.3);
  return model;
}

}  // namespace age_test
