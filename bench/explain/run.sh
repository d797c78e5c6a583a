#!/usr/bin/env bash
# `hpdl explain` against PyTorch (bench/RESULTS.md): the four attribution
# methods on the same LeNet-5 weights and the same first N Fashion-MNIST test
# images. hpdl: `hpdl explain --time` (each method's own call, after a warm-up
# call on one image; no process start, file reading or PNG writing). PyTorch:
# torch_peer.py, the same methods in plain autograd, timed the same way, which
# also prints how far its maps are from hpdl's .npy maps. The run (LeNet-5,
# 2 epochs) is trained once into RUN_DIR and reused. Runs alternate REPEATS
# times per thread count; prints each run and, per method, the min / median
# time per image and of the ratio PyTorch time / hpdl time (> 1: hpdl faster).
#   bench/explain/run.sh [BUILD_DIR] [REPEATS] [N] [THREADS...]   (default: build 3 100 1 2)
# Environment: RUN_DIR (default runs/explain_bench_lenet5), STEPS (32),
# WINDOW (4), STRIDE (2), FILL (0).
set -euo pipefail
build=${1:-build}; repeats=${2:-3}; n=${3:-100}
shift $(( $# < 3 ? $# : 3 ))
threads=("$@"); [[ ${#threads[@]} -gt 0 ]] || threads=(1 2)
here=$(dirname "$0")
run=${RUN_DIR:-runs/explain_bench_lenet5}
steps=${STEPS:-32}; window=${WINDOW:-4}; stride=${STRIDE:-2}; fill=${FILL:-0}
hpdl=$build/bin/hpdl
[[ -x $hpdl ]] || { echo "run.sh: $hpdl not found; build it (ninja -C $build hpdl_cli)" >&2; exit 1; }
/usr/bin/python3 -c "import torch" 2>/dev/null \
  || { echo "run.sh: python3-torch is missing; install it with HPDL_SETUP_PEER=1 bash scripts/setup.sh" >&2; exit 1; }
t10k=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
methods=(saliency ig gradcam occlusion)

if ! ls "$run"/checkpoints/*.safetensors >/dev/null 2>&1; then
  echo "training $run (LeNet-5, 2 epochs)"
  "$hpdl" train examples/fashion_mnist/lenet5.toml --set train.epochs=2 --set train.run_dir="$run" \
    | grep -E "test_acc|accuracy" | tail -1 || true
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for t in "${threads[@]}"; do
  export OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=$t
  for r in $(seq "$repeats"); do
    "$hpdl" explain --checkpoint "$run" --limit "$n" --time --steps "$steps" --window "$window" --stride "$stride" \
      --fill "$fill" --out "$out/hpdl" "$t10k" >"$out/h.txt"
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 \
      /usr/bin/python3 "$here/torch_peer.py" "$t" "$run" "$n" "$steps" "$window" "$stride" "$fill" "$out/hpdl" >"$out/p.txt"
    for m in "${methods[@]}"; do
      hs=$(awk -v m="$m" '$1 == "explain" && $3 == m { print $8 }' "$out/h.txt")
      ps=$(awk -v m="$m" '$1 == "torch" && $2 == "time:" && $3 == m { print $8 }' "$out/p.txt")
      [[ -n $hs && -n $ps ]] || { echo "run.sh: no $m time: $(cat "$out/h.txt" "$out/p.txt")" >&2; exit 1; }
      echo "$t $m $hs $ps" >>"$out/all.txt"
      echo "threads $t run $r $m: hpdl $hs ms/image, torch $ps ms/image, ratio $(awk -v a="$ps" -v b="$hs" 'BEGIN { printf "%.2f", a / b }')"
    done
    [[ $r -eq 1 ]] && grep -E "^(agree|torch ig completeness|torch [0-9])" "$out/p.txt" | sed "s/^/  threads $t: /"
  done
done
echo "summary over $repeats runs, $n images (ms per image; ratio = torch time / hpdl time):"
for t in "${threads[@]}"; do
  for m in "${methods[@]}"; do
    awk -v t="$t" -v m="$m" '
      function med(a, k,   i, j, x) {  # sorts a[1..k] in place, returns the median
        for (i = 2; i <= k; ++i) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; --j) a[j + 1] = a[j]; a[j + 1] = x }
        return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
      $1 == t && $2 == m { ++k; h[k] = $3; p[k] = $4; q[k] = $4 / $3 }
      END { mh = med(h, k); mp = med(p, k); mq = med(q, k)
            printf "threads %s %-9s hpdl min %.4f median %.4f | torch min %.4f median %.4f | ratio min %.2f median %.2f\n",
                   t, m, h[1], mh, p[1], mp, q[1], mq }' "$out/all.txt"
  done
done
