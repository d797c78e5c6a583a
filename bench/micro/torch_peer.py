#!/usr/bin/python3
# PyTorch peer for bench_ops.cpp: the same conv2d / linear / sgemm shapes
# (kept in step with shapes.h), forward and forward+backward, 2 threads.
# Prints one JSON object: {name: {"min_ms": .., "median_ms": .., "gflops_max": .., "gflops_median": ..}}.
# Run with Debian's /usr/bin/python3 (python3-torch); run.sh sets the thread env.
import json
import os
import statistics
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
MIN_TIME = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5

CONV = [("lenet_c1", 128, 1, 28, 28, 6, 5, 5, 1, 2), ("lenet_c2", 128, 6, 14, 14, 16, 5, 5, 1, 0),
        ("resnet_16", 128, 16, 32, 32, 16, 3, 3, 1, 1), ("resnet_32", 128, 32, 16, 16, 32, 3, 3, 1, 1),
        ("resnet_64", 128, 64, 8, 8, 64, 3, 3, 1, 1)]
LINEAR = [("mlp_784_256", 128, 784, 256), ("mlp_256_10", 128, 256, 10), ("sq_1024", 1024, 1024, 1024)]
SGEMM_N = 2048


def timeit(fn):
    """Per-iteration seconds for REPS repetitions, each at least MIN_TIME long (after a warm-up)."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(REPS):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= MIN_TIME:
                break
        out.append(el / n)
    return out


results = {}


def record(name, flops, times):
    results[name] = {"min_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3,
                     "gflops_max": flops / min(times) / 1e9, "gflops_median": flops / statistics.median(times) / 1e9}


for name, N, C, H, W, K, R, S, stride, pad in CONV:
    x = torch.randn(N, C, H, W)
    w = torch.randn(K, C, R, S) * 0.1
    b = torch.zeros(K)
    P = (H + 2 * pad - R) // stride + 1
    Q = (W + 2 * pad - S) // stride + 1
    fwd = 2.0 * N * K * P * Q * C * R * S
    with torch.no_grad():
        record("conv2d_fwd/" + name, fwd, timeit(lambda: torch.nn.functional.conv2d(x, w, b, stride, pad)))
    xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    dy = torch.ones(N, K, P, Q)

    def step():
        y = torch.nn.functional.conv2d(xg, wg, bg, stride, pad)
        torch.autograd.grad(y, (xg, wg, bg), dy)
    record("conv2d_fwdbwd/" + name, 3 * fwd, timeit(step))

for name, B, fin, fout in LINEAR:
    x = torch.randn(B, fin)
    w = torch.randn(fout, fin) * 0.05
    b = torch.zeros(fout)
    fwd = 2.0 * B * fin * fout
    with torch.no_grad():
        record("linear_fwd/" + name, fwd, timeit(lambda: torch.nn.functional.linear(x, w, b)))
    xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    dy = torch.ones(B, fout)

    def lstep():
        y = torch.nn.functional.linear(xg, wg, bg)
        torch.autograd.grad(y, (xg, wg, bg), dy)
    record("linear_fwdbwd/" + name, 3 * fwd, timeit(lstep))

a, bm = torch.randn(SGEMM_N, SGEMM_N), torch.randn(SGEMM_N, SGEMM_N)
record("sgemm/2048", 2.0 * SGEMM_N ** 3, timeit(lambda: torch.mm(a, bm)))
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))
