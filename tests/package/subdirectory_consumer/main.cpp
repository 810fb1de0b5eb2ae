// Uses the Tower directly from age's source tree: scores a batch under a shared dropout
// mask and checks the input gradient of one candidate against a central difference.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include <age/core/rng.hpp>
#include <age/core/types.hpp>
#include <age/model/dropout.hpp>
#include <age/model/sigmoid.hpp>
#include <age/model/tower.hpp>

namespace {
int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("consumer: FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  constexpr age::Index user_dim = 6, item_dim = 4, n = 8;
  age::Tower tower(user_dim, item_dim, {12, 6});
  age::Rng rng(7);
  tower.initialize(rng);

  age::Matrix user(user_dim, 1), items(item_dim, n);
  for (age::Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  for (age::Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<float>(rng.uniform(-1.0, 1.0));

  age::DropoutMask mask;
  tower.sample_mask(0.1, 1, rng, mask);  // one mask sample shared by the whole request

  age::TowerWorkspace ws;
  age::RowVector prob(n);
  age::Matrix d_items;
  tower.probability_gradient(user, items, &mask, ws, prob, &d_items);
  check(d_items.rows() == item_dim && d_items.cols() == n, "d_items is item_dim x N");
  for (age::Index i = 0; i < n; ++i)
    check(std::isfinite(prob[i]) && prob[i] > 0.0f && prob[i] < 1.0f, "probability in (0, 1)");

  // Central difference of candidate 3's probability along item coordinate 1. The tower is
  // piecewise linear, so a small step stays on one piece; float noise sets the tolerance.
  const float h = 1e-2f;
  age::RowVector plus(n), minus(n);
  age::Matrix moved = items;
  moved(1, 3) += h;
  tower.logits(user, moved, &mask, ws, plus);
  moved(1, 3) -= 2 * h;
  tower.logits(user, moved, &mask, ws, minus);
  const float numeric = (age::sigmoid(plus[3]) - age::sigmoid(minus[3])) / (2 * h);
  const float analytic = d_items(1, 3);
  std::printf("consumer: dp/d(item[1]) of candidate 3: analytic %.6f, central difference %.6f\n",
              static_cast<double>(analytic), static_cast<double>(numeric));
  check(std::fabs(numeric - analytic) <= 1e-3f + 0.05f * std::max(std::fabs(numeric), std::fabs(analytic)),
        "input gradient matches a central difference");

  std::printf("consumer: age via add_subdirectory: %d candidates, p in [%.4f, %.4f]\n", static_cast<int>(n),
              static_cast<double>(prob.minCoeff()), static_cast<double>(prob.maxCoeff()));
  if (failures != 0) return 1;
  std::printf("consumer: age consumer OK\n");
  return 0;
}
