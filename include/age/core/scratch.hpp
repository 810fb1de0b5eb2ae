// Grow-only scratch buffers: the workspaces of the passes keep their matrices between
// requests, and a request of fewer candidates than the largest seen reuses them without
// allocating (Eigen reallocates on every change of size).
#pragma once

#include "age/core/types.hpp"

namespace age::detail {

// The first `cols` columns of m, which is reallocated only when it has another row count
// or fewer columns. The block is contiguous (whole columns).
inline auto scratch_cols(Matrix& m, Index rows, Index cols) {
  if (m.rows() != rows || m.cols() < cols) m.resize(rows, cols);
  return m.leftCols(cols);
}
// The first n entries of v, which is reallocated only when it is shorter.
inline auto scratch_head(RowVector& v, Index n) {
  if (v.size() < n) v.resize(n);
  return v.head(n);
}

}  // namespace age::detail
