#!/usr/bin/env bash
# Sanitizer stages of CI, run by .ci/run after the normal build and test suite passed.
#
#   asan  every unit test binary (tests/unit/test_*.cpp and its variants) and example
#         built with clang++, -DAGE_WARNINGS_AS_ERRORS=ON and -fsanitize=address,undefined
#         (LeakSanitizer included), run through ctest: CI's one clang build of the suite,
#         next to the normal stage's gcc one; the consumer-package, compile-fail and
#         PyTorch-parity tests are left out (they drive other builds and programs, and run
#         in the normal stage)
#   tsan  the concurrency tests (every unit test whose source starts threads, e.g.
#         age_test_hot_swap and age_test_scorer) built with gcc and -fsanitize=thread
#   fuzz  every libFuzzer target of tests/fuzz (clang, ASan + UBSan) run for
#         AGE_FUZZ_SECONDS from the seed corpus in tests/fuzz/corpus/<target>/
#
# Any sanitizer report, crash, leak or failed test fails its stage; every stage runs, and
# the script exits non-zero when any failed. Build folders: build-asan, build-tsan,
# build-fuzz. Settings (environment):
#   AGE_SANITIZER_STAGES  stages to run, default "asan tsan fuzz"
#   AGE_FUZZ_SECONDS      time per fuzz target, default 60
#   AGE_JOBS              parallel build jobs, tests and fuzzers, default 2
#   AGE_TSAN_TESTS        test names (without age_test_) for tsan, default: found by grep
# Every build here configures with -DAGE_WITH_TORCH=OFF: libtorch is not built with the
# sanitizers (its own code would report, or miss, what ours does), so the TorchScript
# adapter and its tests run in the normal stage only.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

stages=${AGE_SANITIZER_STAGES:-asan tsan fuzz}
fuzz_seconds=${AGE_FUZZ_SECONDS:-60}
jobs=${AGE_JOBS:-2}
started=$SECONDS
passed=0
failed=0
failed_stages=()

# Stop on the first report, with a stack; LeakSanitizer runs at exit.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

# TSan of gcc 12 / clang 14 cannot map its shadow memory under the high address-space
# randomisation of recent kernels ("unexpected memory mapping"); run without it.
no_aslr=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
  no_aslr=(setarch "$(uname -m)" -R)
fi

log() { echo "sanitizers: $*"; }

# Unit test targets (age_test_*) that a configured build folder knows. The examples stay
# configured in the sanitizer builds: examples/CMakeLists.txt links the sim tests to zlib.
unit_targets() {
  cmake --build "$1" --target help | sed -n 's/^\.\.\. \(age_test_[A-Za-z0-9_]*\).*/\1/p' | sort
}

configure() {  # <build dir> <compiler> <warnings as errors: ON|OFF> <sanitizer flags>
  local flags="-O1 -g1 -fno-omit-frame-pointer $4"
  # A folder configured with another compiler (build-asan was gcc's) starts afresh.
  if [[ -f $1/CMakeCache.txt ]] && ! grep -q "^CMAKE_CXX_COMPILER:[A-Z]*=\(.*/\)\?$2\$" "$1/CMakeCache.txt"; then
    rm -rf "$1"
  fi
  mkdir -p "$1"
  cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_COMPILER="$2" \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$4" \
    -DAGE_BUILD_TESTS=ON -DAGE_BUILD_EXAMPLES=ON -DAGE_BUILD_BENCHMARKS=OFF -DAGE_BUILD_FUZZERS=OFF \
    -DAGE_WITH_TORCH=OFF -DAGE_WARNINGS_AS_ERRORS="$3" >"$1/configure.log" 2>&1 || { cat "$1/configure.log"; return 1; }
}

stage_asan() {
  local dir=$root/build-asan
  if ! command -v clang++ >/dev/null; then
    log "asan: clang++ not found (install clang and libclang-rt-14-dev)"
    return 1
  fi
  configure "$dir" clang++ ON "-fsanitize=address,undefined -fno-sanitize-recover=all" || return 1
  log "asan: building $(unit_targets "$dir" | wc -l) test binaries and the examples"
  cmake --build "$dir" -j"$jobs" || return 1
  # Consumer builds, compile-fail checks and the PyTorch parity run test builds and other
  # programs, not this build's code: the normal stage runs them. The torch tests are only
  # the "skipped" placeholders here (AGE_WITH_TORCH=OFF).
  ctest --test-dir "$dir" -j"$jobs" --output-on-failure --timeout 900 -LE '^(package|parity|torch)$' \
    -E '^(package|parity|compile_fail|torch)[.:]'
}

stage_tsan() {
  local dir=$root/build-tsan
  configure "$dir" g++ OFF "-fsanitize=thread" || return 1
  local names=()
  if [[ -n "${AGE_TSAN_TESTS:-}" ]]; then
    read -ra names <<<"$AGE_TSAN_TESTS"
  else
    local source
    for source in tests/unit/test_*.cpp; do
      if grep -qE 'std::(j)?thread|std::async' "$source"; then
        names+=("$(basename "$source" .cpp | sed 's/^test_//')")
      fi
    done
  fi
  if ((${#names[@]} == 0)); then
    log "tsan: no concurrency tests found"
    return 1
  fi
  local targets=() name
  for name in "${names[@]}"; do targets+=("age_test_$name"); done
  log "tsan: building ${targets[*]}"
  cmake --build "$dir" -j"$jobs" --target "${targets[@]}" || return 1
  local status=0 target
  for target in "${targets[@]}"; do
    log "tsan: running $target"
    (cd "$dir/tests" && "${no_aslr[@]}" "./$target") || status=1
  done
  return $status
}

stage_fuzz() {
  local dir=$root/build-fuzz
  if ! command -v clang++ >/dev/null; then
    log "fuzz: clang++ not found (install clang and libclang-rt-14-dev)"
    return 1
  fi
  mkdir -p "$dir"
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_COMPILER=clang++ \
    -DAGE_BUILD_TESTS=OFF -DAGE_BUILD_EXAMPLES=OFF -DAGE_BUILD_BENCHMARKS=OFF -DAGE_BUILD_FUZZERS=ON \
    -DAGE_WITH_TORCH=OFF -DAGE_WARNINGS_AS_ERRORS=ON >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; return 1; }
  cmake --build "$dir" -j"$jobs" || return 1
  local targets
  mapfile -t targets <"$dir/tests/fuzz/fuzz_targets.txt"
  rm -rf "$dir/fuzz-work" "$dir/fuzz-artifacts"
  mkdir -p "$dir/fuzz-artifacts"

  # Run up to $jobs fuzzers at a time; each writes new inputs to its own work folder and
  # reads the committed seeds, which it leaves untouched.
  local pids=() names=() target dict fuzz_failed=0
  for target in "${targets[@]}"; do
    case $target in
      r6b_*) dict=tests/fuzz/r6b.dict ;;
      safetensors_*) dict=tests/fuzz/safetensors.dict ;;
      *) dict=tests/fuzz/$target.dict ;;
    esac
    mkdir -p "$dir/fuzz-work/$target"
    log "fuzz: $target for $fuzz_seconds s"
    "$dir/tests/fuzz/age_fuzz_$target" -max_total_time="$fuzz_seconds" -timeout=30 -rss_limit_mb=3072 \
      -print_final_stats=1 -dict="$dict" -artifact_prefix="$dir/fuzz-artifacts/$target-" \
      "$dir/fuzz-work/$target" "tests/fuzz/corpus/$target" >"$dir/fuzz-$target.log" 2>&1 &
    pids+=($!)
    names+=("$target")
    if ((${#pids[@]} >= jobs)); then
      wait "${pids[0]}"
      report_fuzz "${names[0]}" $? || fuzz_failed=1
      pids=("${pids[@]:1}")
      names=("${names[@]:1}")
    fi
  done
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    report_fuzz "${names[$i]}" $? || fuzz_failed=1
  done
  return "$fuzz_failed"
}

report_fuzz() {  # <target> <exit status>
  local log_file=$root/build-fuzz/fuzz-$1.log
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file" | tail -n 1)
  if [[ $2 -eq 0 ]]; then
    log "fuzz: $1 passed, ${runs:-?} executions, $(find "$root/build-fuzz/fuzz-work/$1" -type f | wc -l) new corpus inputs"
    return 0
  fi
  log "fuzz: $1 FAILED (exit $2) after ${runs:-?} executions"
  tail -n 60 "$log_file"
  local artifact
  for artifact in "$root"/build-fuzz/fuzz-artifacts/"$1"-*; do
    [[ -e $artifact ]] || continue
    log "fuzz: failing input $artifact (first 512 bytes):"
    head -c 512 "$artifact" | od -A d -t x1z | head -n 40
    log "fuzz: save it as tests/data/fuzz-regression/$1/<name> so age_test_fuzz_regression replays it"
  done
  return 1
}

for stage in $stages; do
  stage_started=$SECONDS
  log "stage $stage started"
  if "stage_$stage"; then
    passed=$((passed + 1))
    log "stage $stage passed in $((SECONDS - stage_started)) s"
  else
    failed=$((failed + 1))
    failed_stages+=("$stage")
    log "stage $stage FAILED after $((SECONDS - stage_started)) s"
  fi
done

log "all stages done after $((SECONDS - started)) s${failed_stages[*]:+; failed: ${failed_stages[*]}}"
echo "sanitizers: $passed passed, $failed failed"
((failed == 0))
