#!/usr/bin/env python3
"""Interleaved A/B(/C) CPU benchmark of one training-step config: artgan's train_step bench
binary (after, and optionally a before binary built from an older commit) against the PyTorch
twin (benches/pytorch_cpu_step.py), run one after the other for --rounds rounds so machine load
hits every side alike. Prints images/s per run and side, the median of each side, the median
ratio artgan / PyTorch (per round, then the median of those), and the peak RSS of each side
(the process's own maximum resident set, from wait4).

  python3 benches/cpu_ab.py --artgan target/release/deps/train_step-HASH \\
      --python /tmp/torchenv/bin/python [--before /tmp/base/train_step-HASH] -- \\
      --preset dcgan --image-size 32 --ngf 32 --ndf 32 --nz 100 --batch-size 64
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{cmd[0]} failed:\n{out}")
    m = re.search(r"([0-9.]+) images/s", out)
    return float(m.group(1)), usage.ru_maxrss / 1024.0  # KiB -> MiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artgan", required=True, help="train_step bench binary")
    ap.add_argument("--before", help="train_step bench binary of the baseline commit")
    ap.add_argument("--python", default=sys.executable, help="python with torch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("config", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cfg = [c for c in a.config if c != "--"]
    sides = {"artgan": [a.artgan, "--device", "cpu", *cfg],
             "pytorch": [a.python, os.path.join(HERE, "pytorch_cpu_step.py"), "--device", "cpu", *cfg]}
    if a.before:
        sides["artgan-before"] = [a.before, "--device", "cpu", *cfg]
    res = {k: [] for k in sides}
    for r in range(a.rounds):
        for k, cmd in sides.items():
            ips, rss = run(cmd)
            res[k].append((ips, rss))
            print(f"round {r + 1} {k}: {ips:.1f} images/s, peak RSS {rss:.0f} MiB", flush=True)
    print(f"config: {' '.join(cfg)}")
    for k, v in res.items():
        print(f"{k}: median {statistics.median(x[0] for x in v):.1f} images/s, "
              f"peak RSS max {max(x[1] for x in v):.0f} MiB")
    for k in res:
        if k == "pytorch":
            continue
        ratios = [x[0] / y[0] for x, y in zip(res[k], res["pytorch"])]
        print(f"ratio {k} / pytorch: median {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
