#!/usr/bin/env bash
# Installs every Debian package hpdl needs to build, test and run its main job.
# Idempotent: packages already present are skipped by apt-get. Run as root (or
# with sudo available). HPDL_SETUP_PEER=1 also installs the benchmark peer
# (python3-torch), which the tests never need.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config
  libdnnl-dev
  openmpi-bin libopenmpi-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  liblz4-dev libzstd-dev libxxhash-dev libpng-dev zlib1g-dev libhdf5-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  strace python3 python3-numpy python3-onnx python3-h5py shellcheck
  dataset-fashion-mnist
)
if [[ "${HPDL_SETUP_PEER:-0}" == 1 ]]; then
  # OpenBLAS on OpenMP: without it python3-torch falls back to the reference BLAS,
  # and the OpenMP build shares the one thread pool instead of fighting it.
  pkgs+=(python3-torch libopenblas0-openmp clang libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "hpdl setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "hpdl setup: all Debian packages present"
fi
