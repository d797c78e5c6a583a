#!/bin/bash
# Store benchmark (issue 5): 60,000 Fashion-MNIST training images, one raw 28x28
# uint8 file each (784 bytes), read in one random order by
#   (a) plain local files            posix_reader (open/read/close) and python3
#   (b) the store, C++ Reader        hpdl_store_bench read (path lookup + read)
#   (c) the store through LD_PRELOAD the same unmodified posix_reader / python3
#   and (a)/(c) once more with posix_reader mapping each file (mmap) instead of reading it,
# side by side in one run, warm (page cache) and cold (drop_caches, when permitted),
# plus the metadata system calls each makes on the data folders (strace -f -y).
# usage: bench/store/run.sh BUILD_DIR [REPS]   (writes bench/store/RESULTS_store.md)
set -euo pipefail
BUILD=$(cd "$1" && pwd)
REPS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/tmp/hpdl_store_bench}
CLI=$BUILD/bin/hpdl_store_cli
BENCH=$BUILD/bin/hpdl_store_bench
POSIX=$BUILD/bin/hpdl_store_bench_posix
SHIM=$BUILD/lib/libhpdl_intercept.so
IDX=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
MOUNT=/hpdl/fmnist
OUT=$WORK/results.txt

rm -rf "$WORK" && mkdir -p "$WORK"
"$CLI" pack "$IDX" -o "$WORK/idxstore" -q
"$BENCH" extract "$WORK/idxstore" "$WORK/files"       # 60,000 files: files/train/00000.bin ...
rm "$WORK/files/train/meta.json"
"$CLI" pack "$WORK/files" -o "$WORK/store"            # the store read in (b) and (c)
(cd "$WORK/files" && ls train) | sed 's#^#train/#' > "$WORK/sorted.txt"
/usr/bin/python3 -c "import random,sys; l=open(sys.argv[1]).read().split(); random.Random(0).shuffle(l); open(sys.argv[2],'w').write('\n'.join(l)+'\n')" \
  "$WORK/sorted.txt" "$WORK/list.txt"

COLD=0
if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then COLD=1; fi
drop() { if [ "$COLD" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
export HPDL_MOUNT=$MOUNT
: > "$OUT"
for _ in $(seq 1 "$REPS"); do
  # Epoch 1 starts from a dropped page cache (cold) when permitted, epochs 2-3 are warm.
  drop; "$POSIX" "$WORK/files" "$WORK/list.txt" 3 plain-c >> "$OUT"
  drop; "$BENCH" read "$WORK/store" "$WORK/list.txt" 3 first_read >> "$OUT"
  "$BENCH" read "$WORK/store" "$WORK/list.txt" 3 never >> "$OUT"
  drop; HPDL_STORE=$WORK/store LD_PRELOAD=$SHIM "$POSIX" "$MOUNT" "$WORK/list.txt" 3 preload-c >> "$OUT"
  drop; "$POSIX" "$WORK/files" "$WORK/list.txt" 3 plain-c-mmap mmap >> "$OUT"
  drop; HPDL_STORE=$WORK/store LD_PRELOAD=$SHIM "$POSIX" "$MOUNT" "$WORK/list.txt" 3 preload-c-mmap mmap >> "$OUT"
  drop; /usr/bin/python3 "$HERE/py_reader.py" "$WORK/files" "$WORK/list.txt" 3 plain-py >> "$OUT"
  drop; HPDL_STORE=$WORK/store LD_PRELOAD=$SHIM /usr/bin/python3 "$HERE/py_reader.py" "$MOUNT" "$WORK/list.txt" 3 preload-py >> "$OUT"
done

# Large files mapped whole, as np.load(mmap_mode="r") maps array shards: 24 files of
# 8 MiB, plain vs the store (aligned by the packer: mapped in place from the partition)
# vs the same files packed with --align-min 0 (each map a copy).
mkdir -p "$WORK/big"
for i in $(seq -w 1 24); do head -c 8M /dev/urandom > "$WORK/big/shard$i.bin"; done
"$CLI" pack "$WORK/big" -o "$WORK/bigstore" -q
"$CLI" pack "$WORK/big" -o "$WORK/bigstore_dense" --align-min 0 -q
(cd "$WORK/big" && ls) > "$WORK/biglist.txt"
for _ in $(seq 1 "$REPS"); do
  drop; "$POSIX" "$WORK/big" "$WORK/biglist.txt" 3 big-plain-mmap mmap >> "$OUT"
  drop; HPDL_STORE=$WORK/bigstore LD_PRELOAD=$SHIM "$POSIX" "$MOUNT" "$WORK/biglist.txt" 3 big-preload-mmap mmap >> "$OUT"
  drop; HPDL_STORE=$WORK/bigstore_dense LD_PRELOAD=$SHIM "$POSIX" "$MOUNT" "$WORK/biglist.txt" 3 big-preload-copy mmap \
    >> "$OUT"
done

# Metadata system calls on the data (one epoch each; strace -y names each fd's file).
META=open,openat,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,fstat,close,getdents64
count() {  # count LOG: calls that name a path under files/ or store/
  echo "$(grep -c "$WORK/files" "$1" || true) $(grep -c "$WORK/store" "$1" || true)"
}
STRACE_OK=0
if command -v strace > /dev/null && strace -o /dev/null true 2>/dev/null; then
  STRACE_OK=1
  strace -f -y -e trace=$META -o "$WORK/s_plain" "$POSIX" "$WORK/files" "$WORK/list.txt" 1 x > /dev/null
  strace -f -y -e trace=$META -o "$WORK/s_reader" "$BENCH" read "$WORK/store" "$WORK/list.txt" 1 > /dev/null
  HPDL_STORE=$WORK/store strace -f -y -e trace=$META -E LD_PRELOAD=$SHIM -o "$WORK/s_preload" \
    "$POSIX" "$MOUNT" "$WORK/list.txt" 1 x > /dev/null
  strace -f -y -e trace=$META -o "$WORK/s_plain_py" /usr/bin/python3 "$HERE/py_reader.py" "$WORK/files" "$WORK/list.txt" 1 x > /dev/null
  HPDL_STORE=$WORK/store strace -f -y -e trace=$META -E LD_PRELOAD=$SHIM -o "$WORK/s_preload_py" \
    /usr/bin/python3 "$HERE/py_reader.py" "$MOUNT" "$WORK/list.txt" 1 x > /dev/null
  for m in plain reader preload plain_py preload_py; do echo "strace $m $(count "$WORK/s_$m")" >> "$OUT"; done
fi
HPDL_STORE=$WORK/store HPDL_INTERCEPT_STATS=1 LD_PRELOAD=$SHIM "$POSIX" "$MOUNT" "$WORK/list.txt" 1 x 2>> "$OUT" > /dev/null

STORE_FILES=$(ls "$WORK/store" | tr '\n' ' ')
echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT"
/usr/bin/python3 "$HERE/summarize.py" "$OUT" "$COLD" "$STRACE_OK" "$REPS" "$STORE_FILES" > "$HERE/RESULTS_store.md"
cat "$HERE/RESULTS_store.md"
