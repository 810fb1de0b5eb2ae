// Paired differences and Student-t intervals (age/sim/statistics.hpp) against values
// computed by hand and against published t tables.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "age/core/error.hpp"
#include "age/sim/statistics.hpp"

using namespace age;
using namespace age::sim;

TEST_CASE("Student t quantiles and CDF match the published tables", "[statistics]") {
  // Two-sided 95% critical values (t_{0.975, df}), to the 6 digits tables give.
  const std::vector<std::pair<double, double>> table{{1, 12.706205}, {2, 4.302653}, {4, 2.776445},
                                                     {9, 2.262157},  {19, 2.093024}, {30, 2.042272}};
  for (const auto& [df, t] : table) {
    CHECK(student_t_quantile(0.975, df) == Approx(t).epsilon(2e-6));
    CHECK(student_t_cdf(t, df) == Approx(0.975).margin(1e-7));  // t has 7 digits
  }
  // df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t) / pi.
  for (double t : {-3.0, -0.5, 0.0, 0.7, 2.0, 10.0})
    CHECK(student_t_cdf(t, 1.0) == Approx(0.5 + std::atan(t) / 3.14159265358979323846).epsilon(1e-12));
  // Symmetry, and the normal limit for large df.
  CHECK(student_t_quantile(0.025, 7.0) == Approx(-student_t_quantile(0.975, 7.0)).epsilon(1e-12));
  CHECK(student_t_quantile(0.975, 1e6) == Approx(1.959966).epsilon(1e-5));
  CHECK_THROWS_AS(student_t_quantile(1.0, 3.0), ConfigError);
  CHECK_THROWS_AS(student_t_cdf(1.0, 0.0), ConfigError);
}

TEST_CASE("paired_difference on a table computed by hand", "[statistics]") {
  // Five seeds. Differences d = {1, 2, 0, 3, 1}: mean 1.4, sum of squared deviations
  // 0.16 + 0.36 + 1.96 + 2.56 + 0.16 = 5.2, sd = sqrt(5.2 / 4) = 1.1401754, se = sd / sqrt(5)
  // = 0.5099020, t_{0.975, 4} = 2.7764451, half-width 1.4157148.
  const std::vector<double> treatment{10, 12, 9, 14, 11}, control{9, 10, 9, 11, 10};
  const PairedDifference p = paired_difference(treatment, control);
  CHECK(p.n == 5);
  CHECK(p.mean == Approx(1.4));
  CHECK(p.sd == Approx(1.1401754).epsilon(1e-7));
  CHECK(p.se == Approx(0.5099020).epsilon(1e-6));
  CHECK(p.low == Approx(1.4 - 1.4157148).margin(1e-6));
  CHECK(p.high == Approx(1.4 + 1.4157148).margin(1e-6));
  CHECK(p.gains == 4);
  CHECK(p.losses == 0);
  CHECK(p.control_mean == Approx(9.8));
  CHECK(p.percent() == Approx(100.0 * 1.4 / 9.8));
  CHECK(p.percent_high() == Approx(100.0 * (1.4 + 1.4157148) / 9.8).margin(1e-5));
  // The interval just includes 0 (low = -0.0157): not a finding.
  CHECK(p.low < 0.0);
  CHECK_FALSE(p.significant());

  // A 90% interval is narrower: t_{0.95, 4} = 2.1318468.
  const PairedDifference p90 = paired_difference(treatment, control, 0.90);
  CHECK(p90.high - p90.mean == Approx(2.1318468 * 0.5099020).epsilon(1e-6));
  CHECK(p90.significant());
}

TEST_CASE("paired_difference: identical runs, losses, and refused input", "[statistics]") {
  const std::vector<double> a{5, 6, 7};
  const PairedDifference same = paired_difference(a, a);
  CHECK(same.mean == 0.0);
  CHECK(same.low == 0.0);
  CHECK(same.high == 0.0);
  CHECK(same.gains == 0);
  CHECK(same.losses == 0);
  CHECK_FALSE(same.significant());

  const std::vector<double> worse{4, 4, 5};
  const PairedDifference down = paired_difference(worse, a);
  CHECK(down.losses == 3);
  CHECK(down.high < 0.0);
  CHECK(down.significant());

  const std::vector<double> two{1, 2};
  CHECK_THROWS_AS(paired_difference(a, two), DimensionError);
  const std::vector<double> one{1};
  CHECK_THROWS_AS(paired_difference(one, one), InputError);
  const std::vector<double> bad{1, std::nan(""), 3};
  CHECK_THROWS_AS(paired_difference(bad, a), InputError);
  CHECK_THROWS_AS(paired_difference(a, a, 1.0), ConfigError);
}
