#!/usr/bin/python3
"""The PyTorch peer for activation checkpointing (bench/e2e/ckpt_run.sh): the
ViT of vit_torch_peer.py, sized as `hpdl train` is told to (patch, dim, depth,
heads), trained for a few steps on Fashion-MNIST in file order, with every
encoder layer under torch.utils.checkpoint (use_reentrant=False) or not.
Prints one JSON line: samples/s over all steps (as hpdl's summary.json), peak RSS.
Usage: ckpt_torch_peer.py THREADS STEPS BATCH PATCH DIM DEPTH HEADS on|off"""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as tc

from vit_torch_peer import Vit, load


def main():
    threads, steps, B, patch, dim, depth, heads = (int(a) for a in sys.argv[1:8])
    ckpt = sys.argv[8] == "on"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = load(True)
    model = Vit(patch=patch, dim=dim, depth=depth, heads=heads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()

    def forward(xb):
        t = model.patch_embed(xb).flatten(2).transpose(1, 2)
        h = torch.cat([model.cls_token.expand(xb.shape[0], -1, -1), t], 1) + model.pos_embed
        for blk in model.blocks:
            h = tc.checkpoint(blk, h, use_reentrant=False) if ckpt else blk(h)
        return model.head(model.norm(h[:, 0]))

    losses = []
    t0 = time.perf_counter()
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x[s * B:(s + 1) * B]), y[s * B:(s + 1) * B])
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
    sps = steps * B / (time.perf_counter() - t0)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "checkpointing": ckpt, "threads": threads,
                      "steps": steps, "samples_per_s": round(sps, 2), "losses": losses,
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
