// The feature layout: which fields a model reads, on which side (user or item) each one
// sits, and how wide its slice of the input embedding h = [user | item] is.
//
// AGE perturbs the ITEM part of h by default (METHOD.md, "Open choices and the library's
// defaults"), so the layout keeps the two sides apart: all user fields, in declaration
// order, form the user vector; all item fields form the item vector.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"

namespace age {

enum class Side { User, Item };
enum class FieldKind { Categorical, MultiHot, Dense };
enum class Pooling { Sum, Mean };

inline std::string_view to_string(Side s) { return s == Side::User ? "user" : "item"; }
inline std::string_view to_string(FieldKind k) {
  switch (k) {
    case FieldKind::Categorical: return "categorical";
    case FieldKind::MultiHot: return "multi_hot";
    case FieldKind::Dense: return "dense";
  }
  return "?";
}
inline std::string_view to_string(Pooling p) { return p == Pooling::Sum ? "sum" : "mean"; }

struct FieldSpec {
  std::string name;
  Side side = Side::User;
  FieldKind kind = FieldKind::Categorical;
  // Width of this field's slice of h: the embedding dimension, or the dense vector's length.
  std::size_t dim = 0;
  // Hash buckets (embedding rows) for categorical and multi-hot fields; 0 for dense.
  std::size_t rows = 0;
  Pooling pooling = Pooling::Sum;  // multi-hot only

  bool has_table() const noexcept { return kind != FieldKind::Dense; }
  friend bool operator==(const FieldSpec&, const FieldSpec&) = default;
};

class FeatureLayout {
 public:
  FeatureLayout() = default;
  FeatureLayout(const FeatureLayout&) = default;
  FeatureLayout& operator=(const FeatureLayout&) = default;
  // A moved-from layout is an empty one (no fields, both sides 0 wide), never one whose
  // widths outlive its fields.
  FeatureLayout(FeatureLayout&& other) noexcept { take(other); }
  FeatureLayout& operator=(FeatureLayout&& other) noexcept {
    if (this != &other) take(other);
    return *this;
  }
  FeatureLayout& add_categorical(std::string name, Side side, std::size_t rows, std::size_t dim) {
    return add({std::move(name), side, FieldKind::Categorical, dim, rows, Pooling::Sum});
  }
  FeatureLayout& add_multi_hot(std::string name, Side side, std::size_t rows, std::size_t dim,
                               Pooling pooling = Pooling::Sum) {
    return add({std::move(name), side, FieldKind::MultiHot, dim, rows, pooling});
  }
  FeatureLayout& add_dense(std::string name, Side side, std::size_t width) {
    return add({std::move(name), side, FieldKind::Dense, width, 0, Pooling::Sum});
  }

  // Validates and appends one field. Names must be unique, widths and row counts positive.
  FeatureLayout& add(FieldSpec spec) {
    if (spec.name.empty()) throw ConfigError("feature field: name: expected a non-empty name, got ''");
    for (const auto& f : fields_)
      if (f.name == spec.name)
        throw ConfigError("feature field '" + spec.name + "': declared twice: expected unique names, got '" +
                          spec.name + "' again");
    if (spec.dim == 0) throw ConfigError("feature field '" + spec.name + "': dim: expected >= 1, got 0");
    if (spec.has_table() && spec.rows == 0)
      throw ConfigError("feature field '" + spec.name + "': rows: expected >= 1, got 0");
    if (!spec.has_table() && spec.rows != 0)
      throw ConfigError("feature field '" + spec.name + "': rows: expected 0 (a dense field has no table), got " +
                        std::to_string(spec.rows));
    // The table (dim x rows) and the side's width stay within kMaxTensorElements, so that an
    // absurd row count is refused here rather than by std::bad_alloc in EmbeddingTables.
    detail::check_tensor_size("feature field '" + spec.name + "': table (dim x rows)", spec.dim,
                              spec.has_table() ? spec.rows : 1);
    detail::check_tensor_size("feature field '" + spec.name + "': side width (dim + earlier fields)",
                              (spec.side == Side::User ? user_dim_ : item_dim_) + spec.dim, 1);
    const bool user = spec.side == Side::User;
    offsets_.push_back(user ? user_dim_ : item_dim_);
    side_index_.push_back(user ? user_fields_ : item_fields_);
    (user ? user_dim_ : item_dim_) += spec.dim;
    (user ? user_fields_ : item_fields_) += 1;
    fields_.push_back(std::move(spec));
    return *this;
  }

  const std::vector<FieldSpec>& fields() const noexcept { return fields_; }
  std::size_t size() const noexcept { return fields_.size(); }
  const FieldSpec& field(std::size_t i) const {
    return detail::require_index("feature layout: field", i, fields_.size()), fields_[i];
  }

  // Offset of field i inside its side's vector (user vector or item vector).
  std::size_t offset(std::size_t i) const {
    return detail::require_index("feature layout: field", i, offsets_.size()), offsets_[i];
  }
  // Position of field i among the fields of its own side (what a SideInput is indexed by).
  std::size_t side_index(std::size_t i) const {
    return detail::require_index("feature layout: field", i, side_index_.size()), side_index_[i];
  }

  std::size_t user_dim() const noexcept { return user_dim_; }
  std::size_t item_dim() const noexcept { return item_dim_; }
  std::size_t input_dim() const noexcept { return user_dim_ + item_dim_; }
  std::size_t user_fields() const noexcept { return user_fields_; }
  std::size_t item_fields() const noexcept { return item_fields_; }
  std::size_t fields_on(Side s) const noexcept { return s == Side::User ? user_fields_ : item_fields_; }

  // Index of the field with this name; throws ConfigError naming it when absent.
  std::size_t index_of(std::string_view name) const {
    for (std::size_t i = 0; i < fields_.size(); ++i)
      if (fields_[i].name == name) return i;
    throw ConfigError("feature layout: no field named '" + std::string(name) + "'");
  }

  friend bool operator==(const FeatureLayout& a, const FeatureLayout& b) { return a.fields_ == b.fields_; }

 private:
  void take(FeatureLayout& other) noexcept {
    fields_ = std::exchange(other.fields_, {});
    offsets_ = std::exchange(other.offsets_, {});
    side_index_ = std::exchange(other.side_index_, {});
    user_dim_ = std::exchange(other.user_dim_, 0);
    item_dim_ = std::exchange(other.item_dim_, 0);
    user_fields_ = std::exchange(other.user_fields_, 0);
    item_fields_ = std::exchange(other.item_fields_, 0);
  }

  std::vector<FieldSpec> fields_;
  std::vector<std::size_t> offsets_;
  std::vector<std::size_t> side_index_;
  std::size_t user_dim_ = 0, item_dim_ = 0;
  std::size_t user_fields_ = 0, item_fields_ = 0;
};

// The raw features of one field of one entity: ids for categorical (exactly one) and
// multi-hot (any number, possibly none) fields, values for dense fields.
struct FieldInput {
  std::vector<std::uint64_t> ids;
  std::vector<float> values;
};

// The features of one user or one item: one FieldInput per field of that side, in the
// order the layout declared them.
using SideInput = std::vector<FieldInput>;

}  // namespace age
