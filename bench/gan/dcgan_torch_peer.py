"""PyTorch peer of hpdl's DCGAN training step (bench/gan/run.sh).

The networks of hpdl/gan/dcgan.h for 28x28x1 images with g = d = 64 and a
64-dim latent (every conv, transposed conv and linear with a bias, batch norm
eps 1e-5 momentum 0.1, weights N(0, 0.02), BN scales N(1, 0.02), zero biases),
the non-saturating loss, Adam(2e-4, betas 0.5/0.999) for both networks, batch
64, and the same step as gan::Dcgan::train_step: G(z) once; a D step on
bce(D(x), 1) + bce(D(G(z).detach()), 0) (two D forwards) with the loss and the
mean D outputs read back; a G step on bce(D(G(z)), 1) through the updated D,
D's parameters frozen for it (requires_grad off, as hpdl does: their gradients
would be discarded).
Fashion-MNIST training images are read from the idx files, scaled to [-1, 1],
drawn in shuffled epochs. float32; prints the seconds of STEPS timed steps
after WARMUP untimed ones. Usage:
  dcgan_torch_peer.py THREADS STEPS [WARMUP]
Data parallel (hpdl_dcgan under mpirun): RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in the environment start a gloo process group; G and D are wrapped
in DistributedDataParallel (the G step runs through D's inner module, so D's
reducer sees only D steps; D's batch-norm buffers go from rank 0 once per
step), each rank draws its own batch of 64 per step, and
rank 0 prints the time.
"""
import os
import gzip
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def load_images(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or rows != 28 or cols != 28:
        raise SystemExit(f"{path}: not an idx3 file of 28x28 images (magic {magic}, {rows}x{cols})")
    pixels = np.frombuffer(raw, dtype=np.uint8, count=count * 784, offset=16)
    return torch.from_numpy(pixels.astype(np.float32).reshape(count, 1, 28, 28) / 127.5 - 1.0)


class Generator(nn.Module):
    def __init__(self, latent=64, g=64, side=7, channels=1):
        super().__init__()
        self.g, self.side = g, side
        self.project = nn.Linear(latent, 2 * g * side * side)
        self.bn0 = nn.BatchNorm2d(2 * g)
        self.up1 = nn.ConvTranspose2d(2 * g, g, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(g)
        self.up2 = nn.ConvTranspose2d(g, channels, 4, 2, 1)

    def forward(self, z):
        h = self.project(z).reshape(z.shape[0], 2 * self.g, self.side, self.side)
        h = F.relu(self.bn0(h))
        h = F.relu(self.bn1(self.up1(h)))
        return torch.tanh(self.up2(h))


class Discriminator(nn.Module):
    def __init__(self, d=64, side=7, channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, d, 4, 2, 1)
        self.conv2 = nn.Conv2d(d, 2 * d, 4, 2, 1)
        self.bn2 = nn.BatchNorm2d(2 * d)
        self.classify = nn.Linear(2 * d * side * side, 1)

    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.2)
        return self.classify(h.flatten(1)).reshape(x.shape[0])


def dcgan_init(module):
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def main():
    threads, steps = int(sys.argv[1]), int(sys.argv[2])
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = load_images(DATA)
    batch, latent = 64, 64
    g, d = Generator(), Discriminator()
    dcgan_init(g)
    dcgan_init(d)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    g_run, d_run, d_inner = g, d, d
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.manual_seed(1 + rank)  # each rank its own batches and latents (the weights came from rank 0)
        # D's buffers: a broadcast at the second D forward of a step would change the running
        # statistics the first one saved for backward; they go from rank 0 once per step instead (as in hpdl).
        g_run, d_run = DDP(g), DDP(d, broadcast_buffers=False)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    order, pos = None, images.shape[0]

    def step():
        nonlocal order, pos
        if pos + batch > images.shape[0]:
            order, pos = torch.randperm(images.shape[0]), 0
        real = images.index_select(0, order[pos:pos + batch])
        pos += batch
        fake = g_run(torch.randn(batch, latent))
        d_opt.zero_grad()
        real_logits, fake_logits = d_run(real), d_run(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(real_logits, ones) + \
            F.binary_cross_entropy_with_logits(fake_logits, zeros)
        stats = (d_loss.item(), torch.sigmoid(real_logits).mean().item(), torch.sigmoid(fake_logits).mean().item())
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad()
        for p in d.parameters():
            p.requires_grad_(False)
        g_loss = F.binary_cross_entropy_with_logits(d_inner(fake), ones)
        g_value = g_loss.item()
        g_loss.backward()
        for p in d.parameters():
            p.requires_grad_(True)
        g_opt.step()
        if world > 1:
            for b in d.buffers():
                dist.broadcast(b, 0)
        return stats + (g_value,)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    seconds = time.perf_counter() - t0
    if rank != 0:
        return
    print(f"torch dcgan: {steps} steps in {seconds:.3f} s ({1e3 * seconds / steps:.1f} ms/step), {threads} threads, {world} rank(s), "
          f"after {warmup} warm-up; last D loss {last[0]:.4f} G loss {last[3]:.4f}")


if __name__ == "__main__":
    main()
