#!/usr/bin/python3
"""Turns bench/store/run.sh's raw lines into the markdown section of RESULTS_store.md."""
import os
import platform
import re
import statistics
import subprocess
import sys

raw, cold, strace_ok, reps, store_files = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4], sys.argv[5]
runs, strace, stats, load = {}, {}, "", "?"
for line in open(raw):
    if line.startswith("mode="):
        kv = dict(p.split("=", 1) for p in line.split())
        if kv["mode"] == "x":
            continue
        runs.setdefault(kv["mode"], []).append((int(kv["epoch"]), float(kv["reads_per_s"]), float(kv["MB_per_s"])))
    elif line.startswith("strace "):
        _, mode, files, store = line.split()
        strace[mode] = (int(files), int(store))
    elif line.startswith("load "):
        load = line.split(" ", 1)[1].strip()
    elif line.startswith("hpdl_intercept stats:"):
        stats = line.split(":", 1)[1].strip()


def med(mode, warm, col):
    vals = [r[col] for r in runs.get(mode, []) if (r[0] > 1) == warm]
    return statistics.median(vals) if vals else float("nan")


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
fs = subprocess.run(["stat", "-f", "-c", "%T", "/tmp"], capture_output=True, text=True).stdout.strip()
print("## Data store (issue 5)\n")
print("60,000 Fashion-MNIST training images (`train-images-idx3-ubyte.gz`), each stored as one raw")
print("28x28 uint8 file of 784 bytes (`train/00000.bin` ...), read once each per epoch in one fixed random")
print("order (seed 0), side by side in one run:\n")
print("- **plain**: the 60,000 files in a local folder, read with open/read/close by `posix_reader` (C) and by")
print("  `py_reader.py` (python3, `open(p,'rb').read()`, what a PyTorch `Dataset.__getitem__` does);")
print("- **reader**: the same files packed into a store (" + store_files.strip() + "), read through")
print("  `hpdl::store::Reader` by path (`find` + `read`, XXH3 verified on first read; `never` = no verification);")
print("- **preload**: the same unmodified `posix_reader` / `py_reader.py` on `/hpdl/fmnist/...` with")
print("  `LD_PRELOAD=libhpdl_intercept.so HPDL_STORE=... HPDL_MOUNT=/hpdl/fmnist`.")
print("- **mmap rows**: `posix_reader ... mmap` maps each file whole (open/fstat/mmap, touch every 64th byte,")
print("  munmap/close) instead of reading it; once on the 60,000 images and once on 24 random files of 8 MiB")
print("  (array shards, as `np.load(mmap_mode='r')` maps them; MB/s counts the bytes mapped).\n")
print(f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}, /tmp on {fs} (local virtual disk).")
print(f"Median of {reps} repetitions; cold = first epoch after `echo 3 > /proc/sys/vm/drop_caches`," if cold
      else f"Median of {reps} repetitions; cold numbers unavailable (drop_caches not permitted);")
print("warm = epochs 2 and 3 (page cache hot); `reader (verify never)` runs warm right after the first_read run.")
print(f"The machine is shared (load average {load} at the end of the run), so expect +-30% noise between runs;")
print("the ratios come from runs interleaved in the same repetition.\n")
print("| reader | cold reads/s | cold MB/s | warm reads/s | warm MB/s | warm vs plain (same client) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
base = {"plain-c": "plain-c", "reader-first_read": "plain-c", "reader-never": "plain-c", "preload-c": "plain-c",
        "plain-py": "plain-py", "preload-py": "plain-py", "plain-c-mmap": "plain-c-mmap",
        "preload-c-mmap": "plain-c-mmap", "big-plain-mmap": "big-plain-mmap", "big-preload-mmap": "big-plain-mmap",
        "big-preload-copy": "big-plain-mmap"}
names = {"plain-c": "(a) plain files, C open/read/close", "reader-first_read": "(b) store, C++ Reader (verify first read)",
         "reader-never": "(b) store, C++ Reader (verify never)", "preload-c": "(c) store via LD_PRELOAD, same C program",
         "plain-py": "(a) plain files, python3", "preload-py": "(c) store via LD_PRELOAD, same python3 script",
         "plain-c-mmap": "(a) plain files, C open/fstat/mmap/munmap/close",
         "preload-c-mmap": "(c) store via LD_PRELOAD, same C program mapping (a copy per map)",
         "big-plain-mmap": "8 MiB files: (a) plain files, C mapping each whole",
         "big-preload-mmap": "8 MiB files: (c) store via LD_PRELOAD (aligned: mapped in place)",
         "big-preload-copy": "8 MiB files: (c) store packed `--align-min 0` via LD_PRELOAD (a copy per map)"}
for mode in ["plain-c", "reader-first_read", "reader-never", "preload-c", "plain-py", "preload-py", "plain-c-mmap",
             "preload-c-mmap", "big-plain-mmap", "big-preload-mmap", "big-preload-copy"]:
    if mode not in runs:
        continue
    c_r, c_m = (med(mode, False, 1), med(mode, False, 2)) if cold and mode != "reader-never" else (float("nan"),) * 2
    w_r, w_m = med(mode, True, 1), med(mode, True, 2)
    ratio = w_r / med(base[mode], True, 1)
    cold_ratio = c_r / med(base[mode], False, 1) if cold and mode != "reader-never" else float("nan")
    fmt = lambda v, d=0: "-" if v != v else f"{v:,.{d}f}"
    print(f"| {names[mode]} | {fmt(c_r)} | {fmt(c_m, 1)} | {fmt(w_r)} | {fmt(w_m, 1)} | "
          f"{ratio:.2f}x warm" + (f", {cold_ratio:.2f}x cold" if cold_ratio == cold_ratio else "") + " |")
if strace_ok:
    print("\nMetadata system calls on the data during one epoch (`strace -f -y -e trace=open,openat,stat,lstat,")
    print("newfstatat,statx,access,faccessat,faccessat2,fstat,close,getdents64`, counting the calls whose path or fd")
    print("lies under the plain folder or the store folder):\n")
    print("| reader | on plain folder | on store folder | total | reduction vs plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    pairs = {"plain": "plain", "reader": "plain", "preload": "plain", "plain_py": "plain_py", "preload_py": "plain_py"}
    labels = {"plain": "(a) plain, C", "reader": "(b) C++ Reader", "preload": "(c) LD_PRELOAD, C",
              "plain_py": "(a) plain, python3", "preload_py": "(c) LD_PRELOAD, python3"}
    for m in ["plain", "reader", "preload", "plain_py", "preload_py"]:
        if m in strace:
            f, s = strace[m]
            b = sum(strace[pairs[m]])
            print(f"| {labels[m]} | {f:,} | {s:,} | {f + s:,} | {b / max(f + s, 1):,.0f}x |")
if stats:
    print(f"\nInterposer counters for (c), C, one epoch (`HPDL_INTERCEPT_STATS=1`): `{stats}` — every open, stat")
    print("and read of the mount was served in user space from the mapped partition.")
print("\nCommands (from the repository root, after building the store targets):\n")
print("```\nbench/store/run.sh BUILD_DIR 3        # writes bench/store/RESULTS_store.md")
print("# which runs, per repetition (WORK=/tmp/hpdl_store_bench):")
print("hpdl_store_cli pack /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz -o $WORK/idxstore")
print("hpdl_store_bench extract $WORK/idxstore $WORK/files && hpdl_store_cli pack $WORK/files -o $WORK/store")
print("hpdl_store_bench_posix $WORK/files $WORK/list.txt 3 plain-c [mmap]")
print("hpdl_store_bench read $WORK/store $WORK/list.txt 3 first_read")
print("HPDL_STORE=$WORK/store HPDL_MOUNT=/hpdl/fmnist LD_PRELOAD=libhpdl_intercept.so \\")
print("    hpdl_store_bench_posix /hpdl/fmnist $WORK/list.txt 3 preload-c [mmap]")
print("python3 bench/store/py_reader.py {$WORK/files | /hpdl/fmnist (with LD_PRELOAD)} $WORK/list.txt 3 LABEL")
print("hpdl_store_cli pack $WORK/big -o $WORK/bigstore   # and --align-min 0 -o $WORK/bigstore_dense")
print("hpdl_store_bench_posix {$WORK/big | /hpdl/fmnist (LD_PRELOAD, either store)} $WORK/biglist.txt 3 LABEL mmap\n```")
