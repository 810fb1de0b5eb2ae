// Numeric types shared by the whole library.
//
// Batches are column-major with ONE COLUMN PER CANDIDATE (features x candidates): a
// candidate's embedding is contiguous, and the tower's layers become plain matrix-matrix
// products W * X with the candidates as the wide dimension.
#pragma once

#include <cstddef>
#include <cstdint>

#include <Eigen/Core>

namespace age {

using Scalar = float;
using Index = Eigen::Index;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

using MatrixRef = Eigen::Ref<Matrix>;
using ConstMatrixRef = Eigen::Ref<const Matrix>;
using VectorRef = Eigen::Ref<Vector>;
using ConstVectorRef = Eigen::Ref<const Vector>;

}  // namespace age
