#!/usr/bin/env python3
# Loads what test_group_norm.cpp wrote (a safetensors file: per case k, the
# input k.x, nn.GroupNorm's k.weight and k.bias, loss weights k.w_out and k.w2,
# and hpdl's outputs), runs torch.nn.functional.group_norm on the same values
# and compares: the output y, the first derivatives of <y, w_out> in x, weight
# and bias, and the derivatives of the second-order loss <d<y, w_out>/dx, w2>
# (create_graph) in x, weight and bias. Prints one line per tensor; exits 1 on
# a difference above 1e-10 (float64) or 1e-4 (float32) times max(1, max |torch|)
# (two values per group make large second derivatives), 77 when torch is missing.
import sys

from torch_check_io import load, torch  # exits 77 when torch is missing

T, meta = load(sys.argv[1])
bad = 0
for k in meta["cases"].split(","):
    groups, eps = int(meta[k + ".groups"]), float(meta[k + ".eps"])
    x = T[k + ".x"].requires_grad_()
    w = T[k + ".weight"].requires_grad_()
    b = T[k + ".bias"].requires_grad_()
    y = torch.nn.functional.group_norm(x, groups, w, b, eps)
    dx, dw, db = torch.autograd.grad((y * T[k + ".w_out"]).sum(), (x, w, b), create_graph=True)
    ggx, ggw, ggb = torch.autograd.grad((dx * T[k + ".w2"]).sum(), (x, w, b), allow_unused=True)
    if ggb is None:  # the bias does not reach d<y, w_out>/dx
        ggb = torch.zeros_like(b)
    got = {"y": y, "dx": dx, "dweight": dw, "dbias": db, "ggx": ggx, "ggweight": ggw, "ggbias": ggb}
    tol = 1e-10 if x.dtype == torch.float64 else 1e-4
    for name in sorted(got):
        key = f"hpdl.{k}.{name}"
        if key not in T:
            print(f"{k}.{name}: missing from the hpdl file")
            bad += 1
            continue
        d = (got[name].detach() - T[key]).abs().max().item()
        ok = d <= tol * max(1.0, got[name].detach().abs().max().item())  # relative to the tensor's size
        bad += not ok
        print(f"case {k} (groups {groups}, {tuple(x.shape)}, {x.dtype}) {name}: max |torch - hpdl| = {d:.3e}"
              f"{'' if ok else '  <-- differs'}")
sys.exit(1 if bad else 0)
