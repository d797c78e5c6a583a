#!/usr/bin/python3
"""The PyTorch peer for bench/e2e: the same mlp, lenet5, resnet20 and resnet50 as
hpdl's model zoo, trained and evaluated on random Fashion-MNIST-shaped batches
(resnet50: 3x224x224, 1000 classes, batch 8), timed the same way (warm-up,
then whole steps). Precision bf16 runs forward and loss (and inference) under
torch.autocast("cpu", dtype=torch.bfloat16), as hpdl_e2e under AutocastScope.
Prints one JSON line per model. Run: torch_peer.py [threads] [models] [fp32|bf16]

Run with /usr/bin/python3 (Debian's python3-torch). The tuned peer removes
PyTorch's two slowdowns on this machine: OpenBLAS's own threads fighting
OpenMP's (OPENBLAS_NUM_THREADS=1) and page faults from glibc returning large
blocks to the OS (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_); run.sh sets both.
"""
import json
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def resnet20(in_channels=1, classes=10):
    layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet-50 v1.5 block (stride on the 3x3), as hpdl's nn::Bottleneck."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = 4 * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def resnet50(in_channels=3, classes=1000):
    layers = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for s, n in enumerate((3, 4, 6, 3)):
        planes = 64 << s
        for b in range(n):
            layers.append(Bottleneck(cin, planes, 2 if (b == 0 and s > 0) else 1))
            cin = 4 * planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def bench(name, model, batch, steps, warmup, bf16):
    torch.manual_seed(0)
    shape, classes = ((3, 224, 224), 1000) if name == "resnet50" else ((1, 28, 28), 10)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            model(x)
    infer = batch * steps / (time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes
    return {"framework": "pytorch", "torch": torch.__version__, "model": name, "precision": "bf16" if bf16 else "fp32", "batch": batch,
            "threads": torch.get_num_threads(), "train_samples_per_s": train, "infer_samples_per_s": infer,
            "max_rss_mb": rss_mb}


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    models = sys.argv[2].split(",") if len(sys.argv) > 2 else ["mlp", "lenet5", "resnet20"]
    precision = sys.argv[3] if len(sys.argv) > 3 else "fp32"
    if precision not in ("fp32", "bf16"):
        sys.exit(f"torch_peer.py: precision must be fp32 or bf16, got {precision}")
    torch.set_num_threads(threads)
    plan = {"mlp": (mlp, 200, 20, 128), "lenet5": (lenet5, 100, 10, 128), "resnet20": (resnet20, 10, 3, 128),
            "resnet50": (resnet50, 2, 1, 8)}
    for name in models:
        make, steps, warmup, batch = plan[name]
        print(json.dumps(bench(name, make(), batch, steps, warmup, precision == "bf16")), flush=True)


if __name__ == "__main__":
    main()
