#!/usr/bin/env python3
"""PyTorch CPU twin of `cargo bench --bench train_step` (the CPU anchor of issue 14).

The same model and step as artgan's `dcgan` preset: G = ConvT(nz→ngf·2^(n-1), k4 s1 p0), then
stride-2 ConvTs halving the width, each with BatchNorm + ReLU, then ConvT(→3, k4 s2 p1) + Tanh;
D = Conv(3→ndf, k4 s2 p1) + LeakyReLU 0.2, then stride-2 convs doubling the width with
BatchNorm + LeakyReLU, then Conv(→1, k4) (a logit); no biases; N(0, 0.02) init. One step =
D on the fixed real batch and on the detached fake, D Adam step, G step through D (as
pytorch/examples: D's parameter gradients are computed there too), Adam(2e-4, 0.5/0.999),
BCEWithLogits, then the EMA of G's weights (in place, like artgan's). Eager mode, fp32.

Timing as the Rust bench: 3 warm-up steps, then up to 30 steps within 20 s (at least 5), the
median step. Prints one line `RESULT {json}` with images_per_s.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn


def generator(nz, ngf, size):
    n = size.bit_length() - 1 - 2  # hidden layers: log2(size) - 2
    widths = [ngf << (n - 1 - i) for i in range(n)]
    layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(ndf, size):
    n = size.bit_length() - 1 - 2
    widths = [ndf << i for i in range(n)]
    layers = [nn.Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)


def init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def time_steps(step, steps=None, sync=lambda: None):
    """Seconds per step as the Rust bench times them: 3 warm-up steps, then `steps` steps (or
    up to 30 within 20 s, at least 5), each up to `sync()` (the device's synchronisation)."""
    for _ in range(3):
        step()
    sync()
    times = []
    budget = time.perf_counter()
    while True:
        n = len(times)
        if steps is not None:
            if n >= steps:
                break
        elif n >= 30 or (n >= 5 and time.perf_counter() - budget >= 20.0):
            break
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dcgan", choices=["dcgan"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=32)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    b, s, nz = args.batch_size, args.image_size, args.nz
    g, d = generator(nz, args.ngf, s), discriminator(args.ndf, s)
    g.apply(init)
    d.apply(init)
    ema = [p.detach().clone() for p in g.parameters()]
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss = nn.BCEWithLogitsLoss()
    real = torch.rand(b, 3, s, s) * 2 - 1
    ones, zeros = torch.ones(b), torch.zeros(b)
    noise = torch.empty(b, nz, 1, 1)

    def step():
        noise.normal_()
        opt_d.zero_grad(set_to_none=False)
        fake = g(noise)
        loss_d = loss(d(real).view(-1), ones) + loss(d(fake.detach()).view(-1), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=False)
        loss_g = loss(d(fake).view(-1), ones)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in g.parameters()], 0.01)

    times = time_steps(step, args.steps)
    med = statistics.median(times)
    name = f"{args.preset}-{s}px-w{args.ngf}-b{b}"
    print(f"pytorch/cpu/{name}: median {med * 1e3:.2f} ms over {len(times)} runs, {b / med:.1f} images/s")
    print("RESULT " + json.dumps({
        "impl": "pytorch-eager-cpu", "config": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "images_per_s": b / med, "ms_per_step": med * 1e3,
    }), flush=True)


if __name__ == "__main__":
    main()
