"""PyTorch peer of build/bin/hpdl_pinn's Adam phase (bench/physics/run.sh).

The same problem, network (tanh MLP, two hidden layers of 32, Xavier weights,
zero biases), collocation point counts, optimizer (Adam, lr 3e-3) and step
count, in float32 on one thread; prints the seconds of the Adam steps and the
relative L2 error on the same test grid. Usage:
  pinn_torch_peer.py poisson_1d|poisson_2d STEPS
"""
import math
import sys
import time

import torch

torch.set_num_threads(1)
torch.manual_seed(0)
PI = math.pi


def mlp(dims):
    layers = []
    for i in range(len(dims) - 1):
        lin = torch.nn.Linear(dims[i], dims[i + 1])
        torch.nn.init.xavier_uniform_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i + 2 < len(dims):
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def second_partials(u, x):
    """d2u/dx_d2 for every column d, summed (the Laplacian), with create_graph."""
    g = torch.autograd.grad(u, x, torch.ones_like(u), create_graph=True)[0]
    lap = 0
    for d in range(x.shape[1]):
        gd = torch.autograd.grad(g[:, d:d + 1], x, torch.ones_like(u), create_graph=True)[0]
        lap = lap + gd[:, d:d + 1]
    return lap


def boundary_points(dims, n):
    if dims == 1:
        return torch.tensor([[0.0], [1.0]])
    per = n // 4
    t = torch.rand(4 * per, 1)
    sides = [torch.cat([torch.zeros(per, 1), t[:per]], 1), torch.cat([torch.ones(per, 1), t[per:2 * per]], 1),
             torch.cat([t[2 * per:3 * per], torch.zeros(per, 1)], 1), torch.cat([t[3 * per:], torch.ones(per, 1)], 1)]
    return torch.cat(sides, 0)


def main():
    problem, steps = sys.argv[1], int(sys.argv[2])
    dims = 1 if problem == "poisson_1d" else 2
    interior, boundary = (128, 2) if dims == 1 else (512, 128)

    def exact(x):
        u = torch.sin(PI * x[:, 0:1])
        return u if dims == 1 else u * torch.sin(PI * x[:, 1:2])

    net = mlp([dims, 32, 32, 1])
    x_in = torch.rand(interior, dims).requires_grad_(True)
    x_b = boundary_points(dims, boundary)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        u = net(x_in)
        residual = second_partials(u, x_in) + dims * PI * PI * exact(x_in)
        loss = (residual ** 2).mean() + ((net(x_b) - exact(x_b)) ** 2).mean()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    n = 1001 if dims == 1 else 101
    axis = torch.linspace(0, 1, n)
    grid = axis[:, None] if dims == 1 else torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        err = torch.linalg.norm(net(grid) - exact(grid)) / torch.linalg.norm(exact(grid))
    print(f"torch {problem}: {steps} Adam steps in {seconds:.3f} s ({steps / seconds:.0f} steps/s), "
          f"relative L2 error {err.item():.3e}")


if __name__ == "__main__":
    main()
