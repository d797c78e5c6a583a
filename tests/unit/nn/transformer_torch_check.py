#!/usr/bin/env python3
# Loads what test_transformer.cpp wrote (a safetensors file: an hpdl
# MultiheadAttention or TransformerEncoderLayer's parameters under their
# PyTorch names, the input, the additive mask, the loss weights, and hpdl's
# output and gradients, all float64; optionally a uint8 key padding mask), runs torch.nn.MultiheadAttention /
# torch.nn.TransformerEncoderLayer (batch_first=True, no dropout) with the
# same state dict and compares every tensor. Prints one line per tensor with
# the max abs difference; exits 1 on any above 1e-10, 77 when torch is missing.
import sys

from torch_check_io import load, torch  # exits 77 when torch is missing

T, meta = load(sys.argv[1])

E, H = int(meta["embed_dim"]), int(meta["num_heads"])
mask = T.get("mask")
kpm = T.get("kpm")  # uint8 key padding, nonzero = ignore
if kpm is not None:
    kpm = kpm.bool()
if meta["kind"] == "mha":
    m = torch.nn.MultiheadAttention(E, H, dropout=0.0, batch_first=True).double()
else:
    m = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=int(meta["dim_feedforward"]), dropout=0.0,
                                         activation=meta["activation"], batch_first=True,
                                         norm_first=meta["norm_first"] == "1").double()
m.load_state_dict({k[len("param."):]: v for k, v in T.items() if k.startswith("param.")})
m.train()  # no fast path: the reference composite forward
x = T["x"].requires_grad_()
if meta["kind"] == "mha":
    out = m(x, x, x, attn_mask=mask, key_padding_mask=kpm, need_weights=False)[0]
else:
    out = m(x, src_mask=mask, src_key_padding_mask=kpm)
(out * T["w_out"]).sum().backward()

got = {"out": out, "dx": x.grad}
for name, p in m.named_parameters():
    got["grad." + name] = p.grad
bad = 0
for name in sorted(got):
    if "hpdl." + name not in T:
        print(f"{name}: missing from the hpdl file")
        bad += 1
        continue
    d = (got[name].detach() - T["hpdl." + name]).abs().max().item()
    ok = d <= 1e-10
    bad += not ok
    print(f"{name}: max |torch - hpdl| = {d:.3e}{'' if ok else '  <-- differs'}")
sys.exit(1 if bad else 0)
