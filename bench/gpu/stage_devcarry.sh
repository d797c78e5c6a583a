#!/usr/bin/env bash
# Stages what a run on the lent GPU machine needs into <checkout>/.devcarry:
# the CUDA test binary, libhpdl.so and the GPU benchmark built HERE (that
# machine has CUDA, cuDNN and cuBLAS but none of hpdl's Debian packages), plus
# the few non-CUDA shared libraries they load, packed as deps.tar.xz.
# Usage: bench/gpu/stage_devcarry.sh BUILD_DIR CHECKOUT   (see docs/gpu.md)
set -euo pipefail
build=${1:?build dir}; dest=${2:?checkout that the device tool sends}/.devcarry
src=$(cd "$(dirname "$0")/../.." && pwd)
g++ -std=c++20 -O2 -I"$src" -DHPDL_HAVE_CUDA=1 -DOMPI_SKIP_MPICXX=1 "$src/bench/gpu/bench_cuda_backend.cpp" \
  -o "$build/bench_cuda_backend" -L"$build/hpdl" -lhpdl -lfmt -Wl,-rpath,'$ORIGIN'
rm -rf "$dest" && mkdir -p "$dest/bin"
cp "$build/tests/hpdl_unit_tests" "$build/hpdl/libhpdl.so" "$build/bench_cuda_backend" "$dest/bin/"
strip "$dest"/bin/*
tmp=$(mktemp -d)
# Everything ldd resolves outside the CUDA toolkit and the C runtime (fmt, oneDNN, OpenMP, OpenCL ICD loader).
ldd "$build/tests/hpdl_unit_tests" | awk '/=> \//{print $3}' \
  | grep -vE '/usr/local/cuda|libcudnn|libc\.so|libm\.so|libstdc\+\+|libgcc_s|ld-linux|libdl|libpthread|librt|libhpdl' \
  | xargs -r -I{} cp -L {} "$tmp/"
tar cJf "$dest/deps.tar.xz" -C "$tmp" . && rm -rf "$tmp"
du -sh "$dest"
