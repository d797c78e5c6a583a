#!/usr/bin/env python3
"""The PyTorch peer of hpdl's checkpoint writes: torch.save of the same tensors.

Reads an hpdl checkpoint (safetensors: an 8-byte header length, a JSON header,
the raw tensor bytes), turns every tensor into a torch tensor, and times
torch.save of that dict, blocking as a training loop calls it, without and
with os.fsync (hpdl's writes fsync the file and its folder). Prints one JSON
line: {"bytes", "save_ms": [...], "save_fsync_ms": [...]}.
Usage: save_torch_peer.py CHECKPOINT.safetensors OUT_DIR REPEATS
"""
import json
import os
import struct
import sys
import time

import numpy as np
import torch

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, v in head.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def main():
    src, out_dir, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = load(src)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    os.makedirs(out_dir, exist_ok=True)
    plain, synced = [], []
    for r in range(repeats):
        path = os.path.join(out_dir, f"peer_{r}.pt")
        t0 = time.perf_counter()
        torch.save(state, path)
        plain.append(1e3 * (time.perf_counter() - t0))
        os.remove(path)
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        synced.append(1e3 * (time.perf_counter() - t0))
        os.remove(path)
    print(json.dumps({"bytes": nbytes, "save_ms": plain, "save_fsync_ms": synced}))


if __name__ == "__main__":
    main()
