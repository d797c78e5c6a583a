#!/usr/bin/env python3
"""Training data for a surrogate of the driven, damped harmonic oscillator.

A mass on a spring with natural frequency w0 and damping ratio zeta, driven by
a force F cos(w t), settles to an oscillation of amplitude (unit F/m)

    A(w0, zeta, w) = 1 / sqrt((w0^2 - w^2)^2 + (2 zeta w0 w)^2)

(any mechanics text, e.g. Taylor, Classical Mechanics, sec. 5.5). The script
samples (w0, zeta, w) uniformly from w0 in [1, 2], zeta in [0.25, 1], w in
[0, 2.5] and writes DIR/train.csv and DIR/test.csv with columns
w0,zeta,w,amplitude: the features first, the target last, as hpdl's csv
reader takes them for a regression loss (the last model.num_classes columns).
Python's standard library only, so it runs without numpy.

usage: make_oscillator.py DIR [--train N] [--test N] [--seed S]
"""
import argparse
import math
import os
import random


def amplitude(w0, zeta, w):
    return 1.0 / math.sqrt((w0 * w0 - w * w) ** 2 + (2.0 * zeta * w0 * w) ** 2)


def write(path, n, rng):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("w0,zeta,w,amplitude\n")
        for _ in range(n):
            w0, zeta, w = rng.uniform(1.0, 2.0), rng.uniform(0.25, 1.0), rng.uniform(0.0, 2.5)
            f.write(f"{w0:.6f},{zeta:.6f},{w:.6f},{amplitude(w0, zeta, w):.6f}\n")
    os.replace(tmp, path)  # a killed run never leaves half a file under the final name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    rng = random.Random(a.seed)
    write(os.path.join(a.dir, "train.csv"), a.train, rng)
    write(os.path.join(a.dir, "test.csv"), a.test, rng)


if __name__ == "__main__":
    main()
