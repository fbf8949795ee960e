#!/usr/bin/env python3
"""The anchor: the same DCGAN training step as artgan's bench, in PyTorch, timed the same way.

pytorch/examples dcgan (nz 100, ngf = ndf = 64, 64x64, no biases, BatchNorm, fp32), fused
BCEWithLogits on D's logit (artgan's D ends in a logit too), Adam(lr 2e-4, betas 0.5/0.999).
One iteration = D on a real batch and on a detached fake batch, D step, G step through D.
Data is a fixed random batch already on the GPU (the step, not the loader, is measured).

Timing: CUDA events around `--iters` iterations after `--warmup` iterations, repeated
`--repeats` times; the median is reported. cudnn.benchmark = True. Modes: eager, and
CUDA graphs (whole iteration captured) or torch.compile if they work here.

Prints one JSON object per (mode, batch) line to stdout, prefixed with `RESULT `.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn


def generator(nz, ngf):
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh(),
    )


def discriminator(ndf):
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
    )


def init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_step(batch, nz, ngf, ndf, dev, compiled=False):
    g, d = generator(nz, ngf).to(dev), discriminator(ndf).to(dev)
    g.apply(init)
    d.apply(init)
    if compiled:  # compile the networks; the step itself (with backward) stays eager
        g, d = torch.compile(g), torch.compile(d)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss = nn.BCEWithLogitsLoss()
    real = torch.rand(batch, 3, 64, 64, device=dev) * 2 - 1
    ones = torch.ones(batch, device=dev)
    zeros = torch.zeros(batch, device=dev)
    noise = torch.randn(batch, nz, 1, 1, device=dev)

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
        return loss_d, loss_g

    return step, (g, d, opt_g, opt_d)


def time_it(fn, iters, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times), times


def run(mode, batch, args, dev):
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    step, modules = make_step(batch, 100, 64, 64, dev, compiled=(mode == "compile"))
    if mode == "cuda_graph":
        for opt in modules[2:]:
            for group in opt.param_groups:
                group["capturable"] = True
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        fn = graph.replay
    else:
        fn = step
    ms, all_ms = time_it(fn, args.iters, args.warmup, args.repeats)
    return {
        "impl": f"pytorch-{mode}",
        "batch": batch,
        "ms_per_iter": ms,
        "images_per_s": batch / (ms / 1000.0),
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20,
        "all_ms": all_ms,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="64,128")
    p.add_argument("--modes", default="eager,cuda_graph,compile")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32, as artgan
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"# torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}", flush=True)
    for mode in args.modes.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            try:
                r = run(mode, batch, args, dev)
            except Exception as e:  # a mode that does not work here is reported, not fatal
                r = {"impl": f"pytorch-{mode}", "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
            print("RESULT " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
