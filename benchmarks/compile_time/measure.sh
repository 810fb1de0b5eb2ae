#!/usr/bin/env bash
# Compile time of a user translation unit (one_request.cpp: includes <age/age.hpp> and
# scores one request with AgeTs), header-only and with AGE_SEPARATE_COMPILATION, g++ -O2,
# runs alternated so that both forms see the same machine load. Optionally against another
# checkout's include/ folder (e.g. an older commit in a git worktree).
#
#   benchmarks/compile_time/measure.sh [RUNS=3] [OTHER_INCLUDE_DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
include=$(cd "$here/../../include" && pwd)
runs=${1:-3}
other=${2:-}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
compile() {  # <label> <include dir> [defines...]
  local label=$1 inc=$2
  shift 2
  /usr/bin/time -f "$label %e s %M KB" g++ -O2 -std=c++20 "$@" -I"$inc" -I/usr/include/eigen3 \
    -c "$here/one_request.cpp" -o "$out/$label.o" 2>&1 | tail -n 1
}
for ((i = 1; i <= runs; ++i)); do
  [[ -n $other ]] && compile other "$other"
  compile header-only "$include"
  compile separate "$include" -DAGE_SEPARATE_COMPILATION
done
