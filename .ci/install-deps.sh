#!/usr/bin/env bash
# Installs with apt-get what age's build, tests, examples and benchmarks need on Debian 12
# (bookworm): compiler and CMake, Eigen, Catch2, nlohmann-json, zlib, Google Benchmark,
# Debian's PyTorch/NumPy/Matplotlib for the parity test and the plots, libtorch for the
# TorchScript adapter (age::torch) and its tests, and clang with its
# runtime libraries (libFuzzer, sanitizers) for .ci/sanitizers.sh. Packages that
# are already installed are skipped; with nothing missing, apt-get is not run at all.
# Run as root (or as a user with sudo).
set -euo pipefail

packages=(
  g++ cmake make
  libeigen3-dev catch2 nlohmann-json3-dev zlib1g-dev libbenchmark-dev
  python3 python3-torch python3-numpy python3-matplotlib
  libtorch-dev
  clang libclang-rt-14-dev
)

missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo=(sudo)
fi

# Mirrors fail transiently now and then: try each apt-get step a second time.
apt() {
  local attempt
  for attempt in 1 2; do
    if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; then
      return 0
    fi
    if [[ $attempt -eq 1 ]]; then
      echo "install-deps: apt-get $1 failed, retrying in 15 s" >&2
      sleep 15
    fi
  done
  return 1
}

apt update
apt install -y --no-install-recommends "${missing[@]}"
