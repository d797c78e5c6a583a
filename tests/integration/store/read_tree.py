#!/usr/bin/python3
"""Run under LD_PRELOAD=libhpdl_intercept.so: checks that every file of SRC reads the
same through MOUNT (open/read, seek, os.stat, os.listdir, os.walk, libc fopen/fread
via ctypes) and that writes to the mount fail with EROFS. Exit 0 when all match."""
import ctypes
import errno
import os
import sys

src, mount = sys.argv[1], sys.argv[2]
bad = []

for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    mroot = mount if rel == "." else os.path.join(mount, rel)
    # Only folders holding files exist in the store (docs/store.md); compare those.
    if not any(fs for _, _, fs in os.walk(root)):
        continue
    want = sorted(d for d in dirs if any(fs for _, _, fs in os.walk(os.path.join(root, d)))) + sorted(files)
    got = sorted(os.listdir(mroot))
    if got != sorted(want):
        bad.append(f"listdir {mroot}: {got} != {sorted(want)}")
    for f in files:
        a, b = os.path.join(root, f), os.path.join(mroot, f)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            da, db = fa.read(), fb.read()
            if da != db:
                bad.append(f"content {b}")
            if len(da) > 10:
                fb.seek(3)
                if fb.read(5) != da[3:8]:
                    bad.append(f"seek {b}")
        if os.stat(b).st_size != os.path.getsize(a) or not os.path.isfile(b):
            bad.append(f"stat {b}")

# libc stdio through ctypes: fopen/fread/fclose on the mount.
libc = ctypes.CDLL(None, use_errno=True)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fread.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
for root, _, files in os.walk(src):
    for f in files[:3]:
        a = os.path.join(root, f)
        b = os.path.join(mount, os.path.relpath(a, src))
        fp = libc.fopen(b.encode(), b"rb")
        if not fp:
            bad.append(f"fopen {b}: errno {ctypes.get_errno()}")
            continue
        size = os.path.getsize(a)
        buf = ctypes.create_string_buffer(size + 1)
        n = libc.fread(buf, 1, size + 1, fp)
        libc.fclose(fp)
        if buf.raw[:n] != open(a, "rb").read():
            bad.append(f"fread {b}")
if libc.fopen(os.path.join(mount, "new.txt").encode(), b"w"):
    bad.append("fopen for writing succeeded")

try:
    open(os.path.join(mount, "new.txt"), "w")
    bad.append("open for writing succeeded")
except OSError as e:
    if e.errno != errno.EROFS:
        bad.append(f"write gave {e}")
if os.path.exists(os.path.join(mount, "..", "x", "..", "no-such-file")):
    bad.append("nonexistent path exists")

for b in bad:
    print("MISMATCH:", b)
print("read_tree:", "OK" if not bad else f"{len(bad)} problems")
sys.exit(1 if bad else 0)
