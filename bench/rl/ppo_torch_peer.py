"""PyTorch peer of build/bin/hpdl_ppo (bench/rl/run_ppo.sh): PPO on CartPole
or Pendulum for a fixed number of iterations, timed.

The same algorithm and settings as examples/rl/ppo.cpp: K = 4 environment
copies, separate actor and critic 64x64 tanh MLPs (PyTorch's default Linear
init, output layers' biases zeroed and the policy head's weights scaled to
0.01 of the default bound), GAE(lambda), the clipped surrogate (0.2), value
loss 0.5 MSE with coefficient 0.5, advantages normalised per minibatch, global
gradient norm clipped at 0.5, Adam (eps 1e-5). CartPole: N = 128, 4 epochs,
minibatch 128, lr 1e-3, gamma 0.99, lambda 0.95. Pendulum: N = 512, 10
epochs, minibatch 256, lr 1e-3, gamma 0.9, lambda 0.95, rewards x 0.1, a
diagonal Gaussian with a learnt state-independent log-std. Truncated episodes
bootstrap from the value of their final observation. The environments follow
the same published equations and are plain Python, as a PyTorch user's would be.

Usage: ppo_torch_peer.py cartpole|pendulum ITERATIONS [SEED]
"""
import math
import random
import sys
import time

import torch

from peer_envs import CartPole

torch.set_num_threads(1)



class Pendulum:
    obs_size, max_steps = 3, 200

    def __init__(self, rng):
        self.rng = rng

    def reset(self):
        self.th, self.thd = self.rng.uniform(-math.pi, math.pi), self.rng.uniform(-1.0, 1.0)
        self.t = 0
        return [math.cos(self.th), math.sin(self.th), self.thd]

    def step(self, a):
        u = min(max(a[0], -2.0), 2.0)
        ang = ((self.th + math.pi) % (2 * math.pi)) - math.pi
        r = -(ang * ang + 0.1 * self.thd * self.thd + 0.001 * u * u)
        self.thd = min(max(self.thd + (15.0 * math.sin(self.th) + 3.0 * u) * 0.05, -8.0), 8.0)
        self.th = self.th + self.thd * 0.05
        self.t += 1
        return [math.cos(self.th), math.sin(self.th), self.thd], r, False, self.t >= self.max_steps


def mlp(inp, out, scale):
    net = torch.nn.Sequential(torch.nn.Linear(inp, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, out))
    with torch.no_grad():
        net[4].weight.mul_(scale)
        net[4].bias.zero_()
    return net


def main():
    task, iterations = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.manual_seed(seed)
    rng = random.Random(seed)
    cont = task == "pendulum"
    if cont:
        env_cls, n, epochs, mb, lr, gamma, lam, rscale, out = Pendulum, 512, 10, 256, 1e-3, 0.9, 0.95, 0.1, 1
    else:
        env_cls, n, epochs, mb, lr, gamma, lam, rscale, out = CartPole, 128, 4, 128, 1e-3, 0.99, 0.95, 1.0, 2
    k, clip, vcoef, max_norm = 4, 0.2, 0.5, 0.5
    envs = [env_cls(rng) for _ in range(k)]
    obs_size = env_cls.obs_size
    actor, critic = mlp(obs_size, out, 0.01), mlp(obs_size, 1, 1.0)
    params = list(actor.parameters()) + list(critic.parameters())
    log_std = None
    if cont:
        log_std = torch.zeros(out, requires_grad=True)
        params.append(log_std)
    opt = torch.optim.Adam(params, lr=lr, eps=1e-5)

    def dist(x):
        o = actor(x)
        if cont:
            return torch.distributions.Normal(o, log_std.exp())
        return torch.distributions.Categorical(logits=o)

    obs = [e.reset() for e in envs]
    running = [0.0] * k
    window, steps = [], 0
    total = n * k
    start = time.perf_counter()
    for it in range(iterations):
        ob = torch.zeros(k, n, obs_size)
        acts = torch.zeros(k, n, out) if cont else torch.zeros(k, n, dtype=torch.long)
        logp, val = torch.zeros(k, n), torch.zeros(k, n)
        rew, nval = torch.zeros(k, n), torch.zeros(k, n)
        term, end = torch.zeros(k, n), torch.zeros(k, n)
        for t in range(n):
            x = torch.tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                d = dist(x)
                a = d.sample()
                lp = d.log_prob(a).sum(-1) if cont else d.log_prob(a)
                v = critic(x).squeeze(-1)
            ob[:, t], acts[:, t], logp[:, t], val[:, t] = x, a, lp, v
            if t > 0:
                nval[:, t - 1] = torch.where(end[:, t - 1] > 0, nval[:, t - 1], v)
            al = a.tolist()
            finals = []
            for e in range(k):
                o2, r, te, tr = envs[e].step(al[e])
                rew[e, t] = r * rscale
                term[e, t] = float(te)
                end[e, t] = float(te or tr)
                running[e] += r
                if te or tr:
                    window = (window + [running[e]])[-20:]
                    running[e] = 0.0
                    if not te:
                        finals.append((e, o2))
                    o2 = envs[e].reset()
                obs[e] = o2
            if finals:
                with torch.no_grad():
                    fv = critic(torch.tensor([f[1] for f in finals], dtype=torch.float32)).squeeze(-1)
                for j, (e, _) in enumerate(finals):
                    nval[e, t] = fv[j]
        with torch.no_grad():
            lv = critic(torch.tensor(obs, dtype=torch.float32)).squeeze(-1)
        nval[:, n - 1] = torch.where(end[:, n - 1] > 0, nval[:, n - 1], lv)
        steps += total
        adv = torch.zeros(k, n)
        last = torch.zeros(k)
        for t in reversed(range(n)):
            delta = rew[:, t] + gamma * (1 - term[:, t]) * nval[:, t] - val[:, t]
            last = delta + gamma * lam * (1 - end[:, t]) * last
            adv[:, t] = last
        ret = adv + val
        b_ob, b_lp, b_v = ob.reshape(total, obs_size), logp.reshape(total), val.reshape(total)
        b_adv, b_ret = adv.reshape(total), ret.reshape(total)
        b_act = acts.reshape(total, out) if cont else acts.reshape(total)
        for _ in range(epochs):
            perm = torch.randperm(total)
            for s in range(0, total - mb + 1, mb):
                idx = perm[s:s + mb]
                d = dist(b_ob[idx])
                lp = d.log_prob(b_act[idx]).sum(-1) if cont else d.log_prob(b_act[idx])
                ent = d.entropy().sum(-1).mean() if cont else d.entropy().mean()
                a_ = b_adv[idx]
                a_ = (a_ - a_.mean()) / (a_.std() + 1e-8)
                ratio = (lp - b_lp[idx]).exp()
                pl = -torch.min(ratio * a_, ratio.clamp(1 - clip, 1 + clip) * a_).mean()
                vl = 0.5 * ((critic(b_ob[idx]).squeeze(-1) - b_ret[idx]) ** 2).mean()
                loss = pl + vcoef * vl - 0.0 * ent
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_norm)
                opt.step()
    elapsed = time.perf_counter() - start
    avg = sum(window) / len(window) if window else float("nan")
    print(f"torch PPO on {task}: {iterations} iterations, {steps} steps in {elapsed:.2f} s "
          f"(avg20 return {avg:.1f})")


if __name__ == "__main__":
    main()
