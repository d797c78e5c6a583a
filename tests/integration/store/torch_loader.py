#!/usr/bin/python3
"""Run under LD_PRELOAD=libhpdl_intercept.so: a PyTorch DataLoader with two forked
workers reads every file of MOUNT (listed with os.listdir) and must see the same
bytes as SRC. Exits 77 when torch is not installed (the test then skips)."""
import os
import sys

try:
    import torch
    from torch.utils.data import DataLoader, Dataset
except ImportError:
    sys.exit(77)

src, mount = sys.argv[1], sys.argv[2]
rel = sorted(os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs)


class Files(Dataset):
    def __init__(self, root):
        self.root = root

    def __len__(self):
        return len(rel)

    def __getitem__(self, i):
        with open(os.path.join(self.root, rel[i]), "rb") as f:
            data = f.read()
        return i, torch.tensor([len(data), sum(data)], dtype=torch.int64)


got = {}
for idx, stats in DataLoader(Files(mount), batch_size=2, num_workers=2, shuffle=True):
    for i, s in zip(idx.tolist(), stats.tolist()):
        got[i] = s
want = {i: Files(src)[i][1].tolist() for i in range(len(rel))}
print("torch_loader:", "OK" if got == want else f"MISMATCH {got} != {want}")
sys.exit(0 if got == want else 1)
