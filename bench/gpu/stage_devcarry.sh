#!/usr/bin/env bash
# Stages what a run on the lent GPU machine needs into <checkout>/.devcarry:
# libhpdl.so, the CUDA tests (tests/unit/cuda as one small gtest binary) and
# the GPU benchmarks built HERE (that machine has CUDA, cuDNN and cuBLAS but
# none of hpdl's Debian packages), plus the few non-CUDA shared libraries they
# load, packed as deps.tar.xz, and the PyTorch peer scripts.
# Usage: bench/gpu/stage_devcarry.sh BUILD_DIR CHECKOUT   (see docs/gpu.md)
set -euo pipefail
build=${1:?build dir}; dest=${2:?checkout that the device tool sends}/.devcarry
src=$(cd "$(dirname "$0")/../.." && pwd)
flags=(-std=c++20 -O2 -I"$src" -DHPDL_HAVE_CUDA=1 -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1
       -I/usr/lib/x86_64-linux-gnu/openmpi/include -L"$build/hpdl" -Wl,-rpath,'$ORIGIN')
for b in bench_cuda_backend gpu_e2e; do
  g++ "${flags[@]}" "$src/bench/gpu/$b.cpp" -o "$build/$b" -lhpdl -lfmt &
done
g++ "${flags[@]}" "$src"/tests/unit/cuda/*.cpp -o "$build/hpdl_cuda_tests" -lhpdl -lfmt -lgtest -lgtest_main -pthread
wait
rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/py/gpu" "$dest/py/e2e"
cp "$build/hpdl/libhpdl.so" "$build/bench_cuda_backend" "$build/gpu_e2e" "$build/hpdl_cuda_tests" "$dest/bin/"
cp "$src/bench/gpu/torch_gpu_peer.py" "$src/bench/gpu/ncu_summary.py" "$dest/py/gpu/" && cp "$src/bench/e2e/torch_peer.py" "$dest/py/e2e/"
# The CLI, the examples and Fashion-MNIST, when built/installed here, for training runs there.
if [ -x "$build/bin/hpdl" ]; then
  cp "$build/bin/hpdl" "$dest/bin/" && cp -r "$src/examples" "$dest/"
  mkdir -p "$dest/data" && cp /usr/share/datasets/fashion-mnist/*.gz "$dest/data/" 2>/dev/null || true
fi
strip "$dest"/bin/*
tmp=$(mktemp -d)
# Everything ldd resolves outside the CUDA toolkit and the C runtime (fmt, oneDNN, OpenMP, MPI, ...).
ldd "$build/hpdl_cuda_tests" "$build/hpdl/libhpdl.so" $([ -x "$build/bin/hpdl" ] && echo "$build/bin/hpdl") | awk '/=> \//{print $3}' | sort -u \
  | grep -vE '/usr/local/cuda|libcudnn|libc\.so|libm\.so|libstdc\+\+|libgcc_s|ld-linux|libdl|libpthread|librt|libhpdl' \
  | xargs -r -I{} cp -L {} "$tmp/"
tar cJf "$dest/deps.tar.xz" -C "$tmp" . && rm -rf "$tmp"
du -sh "$dest"
