#!/usr/bin/python3
"""The PyTorch peer of vit_bench.cpp: the same ViT-tiny (patch 4, dim 64,
depth 4, heads 4, mlp ratio 2, pre-norm GELU encoder layers, class token,
learned positions, LayerNorm eps 1e-6, linear head) trained one epoch on
Fashion-MNIST in file order, batch 128, AdamW lr 1e-3 without weight decay,
pixels in [-1, 1]; then test accuracy in eval mode. Prints one JSON line.
Usage: vit_torch_peer.py [threads=2] [max_steps=0]; vit_run.sh sets the env
(OPENBLAS_NUM_THREADS=1: one thread pool)."""
import gzip
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIR = "/usr/share/datasets/fashion-mnist"


def idx(name):
    with gzip.open(f"{DIR}/{name}", "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4")
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def load(train):
    p = "train" if train else "t10k"
    x = torch.from_numpy(idx(f"{p}-images-idx3-ubyte.gz").astype(np.float32) / 255.0 * 2.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(idx(f"{p}-labels-idx1-ubyte.gz").astype(np.int64))
    return x, y


class Vit(nn.Module):
    def __init__(self, patch=4, dim=64, depth=4, heads=4, mlp_ratio=2.0, classes=10, size=28):
        super().__init__()
        n = (size // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, dim) * 0.02)
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, round(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], 1) + self.pos_embed
        h = self.blocks(h)
        return self.head(self.norm(h[:, 0]))


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    xtr, ytr = load(True)
    xte, yte = load(False)
    model = Vit()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    B = 128
    steps = xtr.shape[0] // B
    if max_steps > 0:
        steps = min(steps, max_steps)
    model.train()
    tail = []
    t0 = time.perf_counter()
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xtr[s * B:(s + 1) * B]), ytr[s * B:(s + 1) * B])
        loss.backward()
        opt.step()
        if s + 20 >= steps:
            tail.append(loss.item())
    train_s = time.perf_counter() - t0
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, xte.shape[0], 500):
            right += (model(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum().item()
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "model": "vit_tiny", "threads": threads,
                      "steps": steps, "train_samples_per_s": round(steps * B / train_s, 2),
                      "train_s": round(train_s, 2), "final_loss": round(sum(tail) / len(tail), 4),
                      "test_accuracy": right / xte.shape[0],
                      "params": sum(p.numel() for p in model.parameters())}), flush=True)


if __name__ == "__main__":
    main()
