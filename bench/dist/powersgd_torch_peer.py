#!/usr/bin/python3
"""The PyTorch peer for bench/dist/powersgd.sh: the mlp example (784-512-256-10,
ReLU) trained data-parallel for one epoch of Fashion-MNIST with
DistributedDataParallel over gloo, plain or with PyTorch's own PowerSGD
communication hook (powerSGD_hook, rank R, error feedback and warm start, from
the third step: PyTorch needs start_powerSGD_iter > 1 with error feedback or
warm start; hpdl runs with train.powersgd_start_step = 2 to match). The same optimizer as
examples/fashion_mnist/mlp.toml: SGD lr 0.05 (not scaled by the ranks: hpdl's
optimizer.lr_scaling is "none" by default), Nesterov momentum 0.9, weight decay 1e-4,
cosine to zero over the epoch; batch 128 per rank; inputs normalized with mean
0.2860, std 0.3530.

Run one process per rank with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
set: powersgd_torch_peer.py THREADS RANK_R (0: plain DDP). Rank 0 prints one
JSON line: training samples/s (the epoch's steps, evaluation left out) and test
accuracy.
"""
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def images(name):
    return (torch.from_numpy(idx(name).astype(np.float32) / 255.0) - 0.2860) / 0.3530


def main():
    threads, rank_r = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x_train, y_train = images("train-images-idx3-ubyte.gz"), torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    x_test, y_test = images("t10k-images-idx3-ubyte.gz"), torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    ddp = nn.parallel.DistributedDataParallel(model)
    if rank_r > 0:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank_r,
                                            start_powerSGD_iter=2, min_compression_rate=1)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    batch = 128
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(x_train), generator=g)
    mine = order[rank::world]
    steps = len(mine) // batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ddp.train()
    t0 = time.perf_counter()
    for s in range(steps):
        i = mine[s * batch:(s + 1) * batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x_train[i]), y_train[i]).backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        correct = (model(x_test).argmax(1) == y_test).sum().item()
    if rank == 0:
        print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "powersgd_rank": rank_r,
                          "ranks": world, "threads": threads, "steps": steps,
                          "train_samples_per_s": steps * batch * world / seconds,
                          "test_accuracy": correct / len(y_test)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
