#!/usr/bin/env python3
"""The PyTorch peer for bench/gpu/gpu_e2e.cpp: the same resnet20 (1x28x28,
from bench/e2e/torch_peer.py) and torchvision's resnet50 (3x224x224, the same
Bottleneck v1.5 as hpdl's), SGD momentum 0.9, random data on the GPU, warm-up,
then whole steps between two torch.cuda.synchronize() calls (median of repeated windows).
math: fp32 (TF32 off everywhere), tf32 (TF32 on for conv and matmul),
bf16 (channels_last + torch.autocast(bfloat16), fp32 master weights),
bf16nchw (autocast without channels_last).
With --hpdl FILE, prints hpdl/PyTorch ratios for the matching hpdl lines.
Usage: torch_gpu_peer.py CASES MATHS [--hpdl FILE]   e.g. resnet20:128,resnet50:64 fp32,bf16
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from torch_peer import resnet20  # noqa: E402


def bench(name, batch, math):
    # cuDNN heuristics by default, as hpdl; TORCH_CUDNN_BENCHMARK=1 searches, as hpdl with HPDL_CUDNN_FIND=1
    torch.backends.cudnn.benchmark = os.environ.get("TORCH_CUDNN_BENCHMARK") == "1"
    tf32 = math == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    big = name == "resnet50"
    if big:
        import torchvision
        model = torchvision.models.resnet50(num_classes=1000)
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        y = torch.randint(0, 1000, (batch,), device="cuda")
    else:
        model = resnet20(1, 10)
        x = torch.randn(batch, 1, 28, 28, device="cuda")
        y = torch.randint(0, 10, (batch,), device="cuda")
    model = model.cuda()
    if math == "bf16":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=math in ("bf16", "bf16nchw")):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    # As gpu_e2e: warm-up of at least 5 steps and 2 s (the GPU's clocks ramp up from idle), then
    # REPEATS timed windows; the rate is their median, with min and max beside it.
    warmup = int(os.environ.get("HPDL_E2E_WARMUP", 5))
    warmup_s = float(os.environ.get("HPDL_E2E_WARMUP_S", 2.0))
    steps = int(os.environ.get("HPDL_E2E_STEPS", 20 if big else 50))
    repeats = max(1, int(os.environ.get("HPDL_E2E_REPEATS", 3)))
    warmed, w0 = 0, time.perf_counter()
    while warmed < warmup or time.perf_counter() - w0 < warmup_s:
        step()
        warmed += 1
        if warmed >= warmup:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        t_launched = time.perf_counter()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        windows.append((wall, (t_launched - t0) / wall))
    wall, host_fraction = sorted(windows)[len(windows) // 2]
    wall_min, wall_max = min(w for w, _ in windows), max(w for w, _ in windows)
    return {"framework": "pytorch", "torch": torch.__version__, "model": name, "batch": batch, "math": math,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "train_images_per_s": round(batch * steps / wall, 1),
            "train_images_per_s_min": round(batch * steps / wall_max, 1),
            "train_images_per_s_max": round(batch * steps / wall_min, 1),
            "repeats": repeats, "warmup_steps": warmed, "step_ms": round(1e3 * wall / steps, 3),
            "host_fraction": round(host_fraction, 3), "loss": round(loss.item(), 4),
            "gpu_mem_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20)}


def main():
    args = sys.argv[1:]
    hpdl_file = None
    if "--hpdl" in args:
        i = args.index("--hpdl")
        hpdl_file = args[i + 1]
        del args[i:i + 2]
    cases = (args[0] if args else "resnet20:128,resnet20:512,resnet50:64").split(",")
    maths = (args[1] if len(args) > 1 else "fp32").split(",")
    results = []
    for math in maths:
        for case in cases:
            name, batch = case.split(":")
            try:
                r = bench(name, int(batch), math)
            except Exception as e:  # noqa: BLE001 (an OOM must not end the whole run)
                r = {"framework": "pytorch", "model": name, "batch": int(batch), "math": math, "error": str(e)[:200]}
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            print(json.dumps(r), flush=True)
            results.append(r)
    if hpdl_file:
        hp = [json.loads(l) for l in open(hpdl_file) if l.startswith("{")]
        print("ratios hpdl/pytorch (training images/s):")
        for h in hp:
            if "train_images_per_s" not in h:
                continue
            for p in results:
                if (p["model"], p["batch"], p["math"]) == (h["model"], h["batch"], h["math"]) and "train_images_per_s" in p:
                    mem = ""
                    if h.get("gpu_mem_max_allocated_mb") and p.get("gpu_mem_max_allocated_mb"):
                        mem = (f"; peak GPU memory {h['gpu_mem_max_allocated_mb']:.0f} vs "
                               f"{p['gpu_mem_max_allocated_mb']:.0f} MB = "
                               f"{h['gpu_mem_max_allocated_mb'] / p['gpu_mem_max_allocated_mb']:.2f}x")
                    print(f"  {h['model']} b{h['batch']}: hpdl {h['math']} {h['train_images_per_s']:.0f} vs "
                          f"torch {p['math']} {p['train_images_per_s']:.0f} = "
                          f"{h['train_images_per_s'] / p['train_images_per_s']:.2f}x{mem}")


if __name__ == "__main__":
    main()
