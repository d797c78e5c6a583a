"""The peers' CartPole: the published equations of motion (Barto, Sutton &
Anderson 1983) with Euler steps of 0.02 s, as hpdl/rl/env.cpp has them, in plain
Python as a PyTorch user's environment would be. Episodes end when the cart
leaves +-2.4 or the pole tilts past 12 degrees, and are truncated at 500 steps.
Shared by dqn_torch_peer.py and ppo_torch_peer.py."""
import math


class CartPole:
    obs_size, max_steps = 4, 500

    def __init__(self, rng):
        self.rng = rng

    def reset(self):
        self.s = [self.rng.uniform(-0.05, 0.05) for _ in range(4)]
        self.t = 0
        return list(self.s)

    def step(self, a):
        x, xd, th, thd = self.s
        force = 10.0 if a == 1 else -10.0
        total, pm, hl = 1.1, 0.1, 0.5
        c, s = math.cos(th), math.sin(th)
        tmp = (force + pm * hl * thd * thd * s) / total
        thacc = (9.8 * s - c * tmp) / (hl * (4.0 / 3.0 - pm * c * c / total))
        xacc = tmp - pm * hl * thacc * c / total
        self.s = [x + 0.02 * xd, xd + 0.02 * xacc, th + 0.02 * thd, thd + 0.02 * thacc]
        self.t += 1
        term = abs(self.s[0]) > 2.4 or abs(self.s[2]) > 12 * 2 * math.pi / 360
        return list(self.s), 1.0, term, self.t >= self.max_steps
