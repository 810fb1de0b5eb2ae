// Embedding tables: one table per categorical or multi-hot field, stored dim x rows so
// that a row (one id's embedding) is a contiguous column. Ids are 64-bit and hashed into
// the table's fixed number of rows, so an id never seen before still lands in range.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/features/layout.hpp"

namespace age {

namespace detail {
// FNV-1a of a field name: a per-field salt, so equal ids in two fields hash differently
// and the bucket of an id does not depend on the order fields were declared in.
constexpr std::uint64_t name_salt(std::string_view name) noexcept {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ULL;
  return h;
}
}  // namespace detail

// Row of `id` in a table of `rows` rows belonging to the field named `field_name`.
inline std::size_t hash_row(std::string_view field_name, std::uint64_t id, std::size_t rows) noexcept {
  return static_cast<std::size_t>(detail::mix64(id ^ detail::name_salt(field_name)) % rows);
}

class EmbeddingTables {
 public:
  EmbeddingTables() = default;
  EmbeddingTables(const EmbeddingTables&) = default;
  EmbeddingTables& operator=(const EmbeddingTables&) = default;
  // A moved-from object holds no layout and no tables (FeatureLayout's move empties it).
  EmbeddingTables(EmbeddingTables&& other) noexcept
      : layout_(std::move(other.layout_)), tables_(std::exchange(other.tables_, {})) {}
  EmbeddingTables& operator=(EmbeddingTables&& other) noexcept {
    if (this != &other) {
      layout_ = std::move(other.layout_);
      tables_ = std::exchange(other.tables_, {});
    }
    return *this;
  }
  explicit EmbeddingTables(FeatureLayout layout) : layout_(std::move(layout)) {
    tables_.resize(layout_.size());
    for (std::size_t f = 0; f < layout_.size(); ++f) {
      const FieldSpec& s = layout_.field(f);
      if (!s.has_table()) continue;
      // The layout bounded the size (FeatureLayout::add); the machine may still lack it.
      try {
        tables_[f] = Matrix::Zero(static_cast<Index>(s.dim), static_cast<Index>(s.rows));
      } catch (const std::bad_alloc&) {
        detail::throw_allocation_failed("embedding table of field '" + s.name + "' (dim x rows)", s.dim, s.rows);
      }
    }
  }

  // Every row from Normal(0, stddev^2). Small stddev (<= 0.01) keeps an unseen id near the
  // model's average prediction instead of at a random score.
  void initialize_normal(Rng& rng, double stddev) {
    detail::check_scale("embedding initialisation: stddev", stddev, /*positive=*/false);
    for (auto& t : tables_)
      for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<Scalar>(rng.normal(0.0, stddev));
  }

  const FeatureLayout& layout() const noexcept { return layout_; }

  // The table of field f (dim x rows); empty for dense fields.
  Matrix& table(std::size_t f) { return detail::require_index("embedding table: field", f, tables_.size()), tables_[f]; }
  const Matrix& table(std::size_t f) const {
    return detail::require_index("embedding table: field", f, tables_.size()), tables_[f];
  }

  std::size_t row_of(std::size_t f, std::uint64_t id) const {
    const FieldSpec& s = layout_.field(f);
    return hash_row(s.name, id, s.rows);
  }

  // Writes the embedding of one user or item into `out` (user_dim or item_dim long).
  template <class Out>
  void embed(Side side, const SideInput& input, Out&& out) const {
    const std::size_t side_dim = side == Side::User ? layout_.user_dim() : layout_.item_dim();
    detail::require_dim(std::string(to_string(side)) + " embedding output length", side_dim,
                        static_cast<std::size_t>(out.size()));
    detail::require_dim(std::string(to_string(side)) + " features: number of fields",
                        layout_.fields_on(side), input.size());
    for (std::size_t f = 0; f < layout_.size(); ++f) {
      const FieldSpec& s = layout_.field(f);
      if (s.side != side) continue;
      const FieldInput& in = input[layout_.side_index(f)];
      auto slice = out.segment(static_cast<Index>(layout_.offset(f)), static_cast<Index>(s.dim));
      switch (s.kind) {
        case FieldKind::Dense: {
          detail::require_dim("dense field '" + s.name + "': number of values", s.dim, in.values.size());
          for (std::size_t k = 0; k < s.dim; ++k) {
            if (!std::isfinite(in.values[k]))
              throw InputError("dense field '" + s.name + "': values[" + std::to_string(k) +
                               "]: expected a finite value, got " + std::to_string(in.values[k]));
            slice[static_cast<Index>(k)] = in.values[k];
          }
          break;
        }
        case FieldKind::Categorical: {
          if (in.ids.size() != 1)
            throw InputError(detail::mismatch("categorical field '" + s.name + "': number of ids", 1, in.ids.size()));
          slice = tables_[f].col(static_cast<Index>(row_of(f, in.ids[0])));
          break;
        }
        case FieldKind::MultiHot: {
          slice.setZero();
          for (std::uint64_t id : in.ids) slice += tables_[f].col(static_cast<Index>(row_of(f, id)));
          if (s.pooling == Pooling::Mean && !in.ids.empty())
            slice /= static_cast<Scalar>(in.ids.size());
          break;
        }
      }
    }
  }

  // One request: the user vector once, and the item matrix item_dim x N (one column per
  // candidate).
  void embed_request(const SideInput& user, std::span<const SideInput> items, Vector& user_out,
                     Matrix& items_out) const {
    user_out.resize(static_cast<Index>(layout_.user_dim()));
    embed(Side::User, user, user_out);
    items_out.resize(static_cast<Index>(layout_.item_dim()), static_cast<Index>(items.size()));
    for (std::size_t n = 0; n < items.size(); ++n) embed(Side::Item, items[n], items_out.col(static_cast<Index>(n)));
  }

  // Adds d(loss)/d(embedding of this entity) to the rows it was pooled from, through
  // `add_row(field, row, gradient_slice)`; dense fields have no parameters and are skipped.
  template <class Grad, class AddRow>
  void scatter_gradient(Side side, const SideInput& input, const Grad& grad, AddRow&& add_row) const {
    for (std::size_t f = 0; f < layout_.size(); ++f) {
      const FieldSpec& s = layout_.field(f);
      if (s.side != side || !s.has_table()) continue;
      const FieldInput& in = input[layout_.side_index(f)];
      if (in.ids.empty()) continue;
      const auto slice = grad.segment(static_cast<Index>(layout_.offset(f)), static_cast<Index>(s.dim));
      const Scalar scale = (s.kind == FieldKind::MultiHot && s.pooling == Pooling::Mean)
                               ? Scalar(1) / static_cast<Scalar>(in.ids.size())
                               : Scalar(1);
      for (std::uint64_t id : in.ids) add_row(f, row_of(f, id), slice, scale);
    }
  }

 private:
  FeatureLayout layout_;
  std::vector<Matrix> tables_;
};

}  // namespace age
