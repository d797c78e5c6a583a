"""Why hpdl's and PyTorch's integrated-gradients maps differ on a few images.

Computes the IG maps of the run in bench/explain/run.sh (same model, images,
path and baseline as torch_peer.py) with PyTorch in float32 and in float64,
reads hpdl's float32 maps (`hpdl explain --method ig --steps STEPS --out DIR`),
and prints every image on which any pair differs by more than 1e-5. For those
images it names the path point whose gradient moves most between float32 and
float64, and, at that point (in float64), the smallest gap between the two
largest values of a max-pool window (with a positive maximum) and the
smallest |pre-activation| of each ReLU: a window whose top two values are
closer than float32's rounding sends the gradient to whichever one float32
happens to make larger. Usage:
  ig_precision.py RUN_DIR HPDL_OUT [N] [STEPS]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peer as tp  # noqa: E402


def point_gradients(model, points, target):
    leaf = points.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf).gather(1, target.view(-1, 1)).sum(), leaf)
    return g


def near_ties(net, z):
    """Smallest max-pool top-2 gap and |pre-ReLU| per layer, for one input z."""
    out = []
    for j, layer in enumerate(net):
        if isinstance(layer, torch.nn.MaxPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            windows = F.unfold(z.flatten(0, 1).unsqueeze(1), k, stride=layer.stride)
            top = windows.topk(2, dim=1).values
            gap = (top[:, 0] - top[:, 1])[top[:, 0] > 0]
            out.append(f"layer {j} max-pool top-2 gap {float(gap.min()):.3g}")
        if isinstance(layer, torch.nn.ReLU):
            out.append(f"layer {j} |pre-ReLU| {float(z.abs().min()):.3g}")
        z = layer(z)
    return "; ".join(out)


def main():
    if len(sys.argv) not in (3, 4, 5):
        raise SystemExit(__doc__)
    run_dir, hpdl_out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    torch.set_num_threads(1)
    net, mean, std, _ = tp.load_model(run_dir)
    net64 = tp.load_model(run_dir)[0].double()
    mean64, std64 = mean.double(), std.double()
    f32 = lambda z: net((z - mean) / std)  # noqa: E731
    f64 = lambda z: net64((z - mean64) / std64)  # noqa: E731
    x = tp.load_images(tp.TEST, n)
    with torch.no_grad():
        t = f32(x).argmax(dim=1)
    h = tp.read_npy_maps(os.path.join(hpdl_out, f"{tp.STEM}-ig.npy")).double()
    p32 = tp.integrated_gradients(f32, x, t, steps, 0.0)[0].detach().double()
    p64 = tp.integrated_gradients(f64, x.double(), t, steps, 0.0)[0].detach()
    if h.shape != p32.shape:
        raise SystemExit(f"{hpdl_out}: the ig maps are {list(h.shape)}, expected {list(p32.shape)}")
    per_image = lambda a, b: (a - b).abs().amax(dim=(1, 2))  # noqa: E731
    d_h32, d_h64, d_3264 = per_image(h, p32), per_image(h, p64), per_image(p32, p64)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    flagged = 0
    for i in range(n):
        if max(d_h32[i], d_h64[i], d_3264[i]) <= 1e-5:
            continue
        flagged += 1
        points = alphas.view(steps, 1, 1, 1) * x[i:i + 1]
        target = t[i].repeat(steps)
        d = (point_gradients(f32, points, target).double() - point_gradients(f64, points.double(), target))
        d = d.abs().flatten(1).amax(1)
        k = int(d.argmax())
        z = (points[k:k + 1].double() - mean64) / std64
        print(f"image {i}: |hpdl - torch f32| {d_h32[i]:.3g}, |hpdl - torch f64| {d_h64[i]:.3g}, "
              f"|torch f32 - torch f64| {d_3264[i]:.3g} (map max {float(p64[i].abs().max()):.3g}); "
              f"point {k} (alpha {alphas[k]:.4f}) gradient moves {d[k]:.3g}: {near_ties(net64, z)}")
    rest = [i for i in range(n) if max(d_h32[i], d_h64[i], d_3264[i]) <= 1e-5]
    print(f"{flagged} of {n} images differ by > 1e-5; on the other {len(rest)}: "
          f"|hpdl - torch f32| <= {float(d_h32[rest].max()):.3g}, "
          f"|torch f32 - torch f64| <= {float(d_3264[rest].max()):.3g}")


if __name__ == "__main__":
    main()
