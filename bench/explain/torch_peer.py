"""PyTorch peer of `hpdl explain` (bench/explain/run.sh).

Loads the LeNet-5 weights of an hpdl run (its newest checkpoint, a safetensors
file read here with json/struct/numpy, no safetensors package needed), the
run's input normalization (config.toml), and the first N Fashion-MNIST test
images (pixels / 255), and computes the four maps of hpdl/explain/explain.h
in plain PyTorch autograd with the same parameters and batching:
  saliency   max over channels of |d logit_c / d x|, one batch of N
  ig         integrated gradients, midpoint rule with STEPS points, baseline =
             the image filled with FILL, path points in chunks of 256, plus
             the completeness check score(x) - score(baseline) hpdl also makes
  gradcam    at the output of layer "5" (the second max pool, 16x5x5; hpdl's
             default), ReLU(sum_k mean(dA_k) A_k), bilinear (align_corners=False)
  occlusion  WINDOW x WINDOW squares set to FILL every STRIDE pixels (the last
             window moved in to the edge), windows in chunks of 256, the mean
             score drop over the windows covering each pixel
The explained class is the predicted one. Each method: one untimed call on the
first image, then the call on all N images is timed (as `hpdl explain --time`).
With HPDL_OUT (the folder `hpdl explain` wrote its .npy maps to) it also prints
how far the two maps are apart. Usage:
  torch_peer.py THREADS RUN_DIR N STEPS WINDOW STRIDE FILL [HPDL_OUT]
"""
import glob
import gzip
import json
import os
import struct
import sys
import time
import tomllib

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
STEM = "t10k-images-idx3-ubyte"
METHODS = ["saliency", "ig", "gradcam", "occlusion"]
MAX_BATCH = 256


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
    out = {}
    for name, e in header.items():
        if name == "__metadata__" or e["dtype"] not in dtypes:
            continue
        b, end = e["data_offsets"]
        a = np.frombuffer(blob, dtype=dtypes[e["dtype"]], count=(end - b) // np.dtype(dtypes[e["dtype"]]).itemsize,
                          offset=8 + n + b)
        out[name] = torch.from_numpy(a.reshape(e["shape"]).copy())
    return out


def load_images(path, count):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, total, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or rows != 28 or cols != 28:
        raise SystemExit(f"{path}: not an idx3 file of 28x28 images (magic {magic}, {rows}x{cols})")
    if count > total:
        raise SystemExit(f"{path}: {total} images, {count} asked for")
    pixels = np.frombuffer(raw, dtype=np.uint8, count=count * 784, offset=16)
    return torch.from_numpy(pixels.astype(np.float32).reshape(count, 1, 28, 28) / 255.0)


def lenet5():
    # The layer indices of hpdl's Sequential, so the checkpoint's names fit.
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def load_model(run_dir):
    files = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.safetensors")))
    if not files:
        raise SystemExit(f"{run_dir}/checkpoints: no .safetensors checkpoint (train the run first)")
    tensors = read_safetensors(files[-1])
    net = lenet5()
    names = net.state_dict().keys()
    # A checkpoint holds "model.NAME" (and "optim...."); a bare weights file NAME.
    tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
    missing = [k for k in names if k not in tensors]
    if missing:
        raise SystemExit(f"{files[-1]}: no tensors {missing}; it has {sorted(tensors)[:20]}")
    net.load_state_dict({k: tensors[k] for k in names})
    net.eval()
    with open(os.path.join(run_dir, "config.toml"), "rb") as f:
        data = tomllib.load(f).get("data", {})
    if data.get("normalize", True):
        mean = torch.tensor(data.get("mean", [0.2860]), dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.tensor(data.get("std", [0.3530]), dtype=torch.float32).reshape(1, -1, 1, 1)
    else:
        mean, std = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    return net, mean, std, files[-1]


def scores(model, x, t):
    return model(x).gather(1, t.view(-1, 1)).view(-1)


def saliency(model, x, t):
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(scores(model, leaf, t).sum(), leaf)
    return g.abs().amax(dim=1)


def integrated_gradients(model, x, t, steps, fill):
    n = x.shape[0]
    base = torch.full_like(x, fill)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    # Path points in (sample, step) order, as hpdl builds them.
    points = base.unsqueeze(1) + alphas.view(1, steps, 1, 1, 1) * (x - base).unsqueeze(1)
    points = points.reshape(n * steps, *x.shape[1:])
    pt = t.repeat_interleave(steps)
    grads = []
    for first in range(0, n * steps, MAX_BATCH):
        leaf = points[first:first + MAX_BATCH].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(scores(model, leaf, pt[first:first + MAX_BATCH]).sum(), leaf)
        grads.append(g)
    mean_grad = torch.cat(grads).view(n, steps, *x.shape[1:]).mean(dim=1)
    attr = (x - base) * mean_grad
    with torch.no_grad():
        gap = scores(model, x, t) - scores(model, base, t)
    return attr.sum(dim=1), attr.flatten(1).sum(1), gap


def grad_cam(features, head, x, t):
    with torch.no_grad():
        a = features(x)
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(scores(head, a, t).sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).squeeze(1)


def occlusion(model, x, t, window, stride, fill):
    n, c, h, w = x.shape

    def starts(side):
        return list(range(0, side - window, stride)) + [side - window]

    # One mask per window position [P, 1, H, W], built once; a chunk is a
    # gather of images and masks, not a Python loop over windows.
    pos = [(y0, x0) for y0 in starts(h) for x0 in starts(w)]
    masks = torch.zeros(len(pos), 1, h, w, dtype=torch.bool)
    for p, (y0, x0) in enumerate(pos):
        masks[p, :, y0:y0 + window, x0:x0 + window] = True
    per = len(pos)
    with torch.no_grad():
        base = scores(model, x, t)
        drop = torch.zeros(n, h, w)
        for first in range(0, n * per, MAX_BATCH):
            k = torch.arange(first, min(first + MAX_BATCH, n * per))
            i, p = k // per, k % per
            batch = torch.where(masks[p], torch.tensor(fill, dtype=x.dtype), x[i])
            d = base[i] - scores(model, batch, t[i])
            drop.index_add_(0, i, d.view(-1, 1, 1) * masks[p, 0])
        cover = masks[:, 0].sum(dim=0).to(torch.float32)
    return drop / cover


def read_npy_maps(path):
    return torch.from_numpy(np.load(path).astype(np.float32))


def main():
    if len(sys.argv) not in (8, 9):
        raise SystemExit(__doc__)
    threads, run_dir, n, steps, window, stride = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:7])
    fill = float(sys.argv[7])
    hpdl_out = sys.argv[8] if len(sys.argv) == 9 else None
    torch.set_num_threads(threads)
    net, mean, std, ckpt = load_model(run_dir)
    model = lambda x: net((x - mean) / std)  # noqa: E731 (normalization is part of the explained function)
    features = lambda x: net[:6]((x - mean) / std)  # noqa: E731 (through layer "5")
    head = net[6:]
    x = load_images(TEST, n)
    with torch.no_grad():
        t = net((x - mean) / std).argmax(dim=1)
    run = {
        "saliency": lambda xs, ts: saliency(model, xs, ts),
        "ig": lambda xs, ts: integrated_gradients(model, xs, ts, steps, fill)[0],
        "gradcam": lambda xs, ts: grad_cam(features, head, xs, ts),
        "occlusion": lambda xs, ts: occlusion(model, xs, ts, window, stride, fill),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.path.basename(ckpt)}")
    maps = {}
    for m in METHODS:
        run[m](x[:1], t[:1])
        start = time.perf_counter()
        maps[m] = run[m](x, t)
        s = time.perf_counter() - start
        print(f"torch time: {m} {n} samples {s:.6f} s {1e3 * s / n:.4f} ms/sample")
    _, ig_sum, gap = integrated_gradients(model, x, t, steps, fill)
    print(f"torch ig completeness: max |sum - gap| {float((ig_sum - gap).abs().max()):.3g} "
          f"(max |gap| {float(gap.abs().max()):.3g})")
    if hpdl_out:
        for m in METHODS:
            h = read_npy_maps(os.path.join(hpdl_out, f"{STEM}-{m}.npy"))
            p = maps[m].detach()
            if h.shape != p.shape:
                raise SystemExit(f"{hpdl_out}: the {m} maps are {list(h.shape)}, the peer's {list(p.shape)}")
            diff = float((h - p).abs().max())
            scale = float(p.abs().max())
            corr = float(np.corrcoef(h.flatten().numpy(), p.flatten().numpy())[0, 1])
            print(f"agree: {m} max_abs_diff {diff:.3g} relative {diff / scale:.3g} correlation {corr:.8f}")


if __name__ == "__main__":
    main()
