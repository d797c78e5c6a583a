"""PyTorch peer of build/bin/hpdl_dqn (bench/rl/run.sh): DQN on CartPole for a
fixed number of environment steps, timed.

The same algorithm and settings as hpdl's DqnOptions defaults: Q-network
4-64-64-2 (ReLU), Adam lr 1e-3, batch 64, replay 50,000, learning from step
1,000, one update per step, target sync every 500 steps, epsilon 1 -> 0.05
over 10,000 steps, Huber loss, gradient norm clipped at 10, gamma 0.99.
CartPole follows the same published equations (Barto, Sutton & Anderson 1983)
with Euler steps; the environment is plain Python, as a PyTorch user's would
be. Usage: dqn_torch_peer.py STEPS
"""
import random
import sys
import time

import torch

from peer_envs import CartPole

torch.set_num_threads(1)


def net():
    return torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 2))


def main():
    steps = int(sys.argv[1])
    rng = random.Random(0)
    torch.manual_seed(0)
    q, target = net(), net()
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    cap = 50000  # the replay buffer as preallocated tensors, indexed in place
    bs, ba = torch.zeros(cap, 4), torch.zeros(cap, dtype=torch.long)
    br, bn, bd = torch.zeros(cap), torch.zeros(cap, 4), torch.zeros(cap)
    size = 0
    gen = torch.Generator().manual_seed(0)
    env = CartPole(rng)
    obs = env.reset()
    episodes, ret = 0, 0.0
    t0 = time.perf_counter()
    for step in range(steps):
        eps = max(0.05, 1.0 - (1.0 - 0.05) * step / 10000)
        if rng.random() < eps:
            a = rng.randrange(2)
        else:
            with torch.no_grad():
                a = int(q(torch.tensor([obs])).argmax(1).item())
        nobs, r, term, trunc = env.step(a)
        ret += r
        k = step % cap
        bs[k] = torch.tensor(obs)
        ba[k], br[k], bd[k] = a, r, float(term)
        bn[k] = torch.tensor(nobs)
        size = min(size + 1, cap)
        obs = nobs
        if term or trunc:
            obs, episodes, ret = env.reset(), episodes + 1, 0.0
        if step + 1 >= 1000:
            idx = torch.randint(size, (64,), generator=gen)
            s, act, rew, ns, done = bs[idx], ba[idx], br[idx], bn[idx], bd[idx]
            with torch.no_grad():
                y = rew + 0.99 * target(ns).max(1).values * (1.0 - done)
            qa = q(s).gather(1, act[:, None]).squeeze(1)
            loss = torch.nn.functional.smooth_l1_loss(qa, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(q.parameters(), 10.0)
            opt.step()
        if (step + 1) % 500 == 0:
            target.load_state_dict(q.state_dict())
    seconds = time.perf_counter() - t0
    print(f"torch dqn: {steps} steps, {episodes} episodes in {seconds:.2f} s ({steps / seconds:.0f} steps/s)")


if __name__ == "__main__":
    main()
