// age-ope obd-check: the checks anyone can rerun on the real Open Bandit Dataset sample,
// and the table of the library's learned policies on it (README, "Propensities and
// off-policy evaluation").
#pragma once

#include "options.hpp"

namespace ope {

// Prints the tables; returns 0, or 1 when a check's interval misses the value it must hold.
int run_obd_check(const Options& o);

}  // namespace ope
