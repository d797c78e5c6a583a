#!/usr/bin/python3
# PyTorch peer of rnn_bench.cpp: the same recurrent-layer training step
# (forward + backward, every gradient, grads reset to None each step) on the
# same configs, one JSON line per config. Run by rnn_run.sh with the thread env.
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
CONFIGS = {  # kept in step with rnn_bench.cpp: (cell, T, N, I, H, layers)
    "lstm_small": ("lstm", 28, 128, 28, 128, 1),
    "lstm_big": ("lstm", 50, 64, 256, 512, 1),
    "gru_small": ("gru", 28, 128, 28, 128, 1),
    "lstm_2layer": ("lstm", 28, 128, 28, 128, 2),
}
names = (sys.argv[1] if len(sys.argv) > 1 else "lstm_small,lstm_big").split(",")
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
min_s = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
torch.manual_seed(1)
for name in names:
    cell, T, N, I, H, L = CONFIGS[name]
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, num_layers=L)
    x = torch.randn(T, N, I)
    g = torch.randn(T, N, H)

    def step():
        for p in layer.parameters():
            p.grad = None
        y, _ = layer(x)
        (y * g).sum().backward()

    for _ in range(2):
        step()
    rates = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_s:
                break
        rates.append(N * n / el)
    print(json.dumps({"framework": "pytorch", "config": name, "samples_per_s": [round(r, 2) for r in rates]}), flush=True)
