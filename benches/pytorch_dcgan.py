#!/usr/bin/env python3
"""The GPU anchor: artgan's DCGAN training step in PyTorch, one configuration per run, timed as
`cargo bench --bench train_step` times artgan's, so the two print lines that pair up.

The model and step are pytorch_cpu_step.py's (pytorch/examples dcgan, no biases, BatchNorm,
N(0, 0.02) init, BCEWithLogits on D's logit, Adam 2e-4 / (0.5, 0.999), then the EMA of G's
weights as artgan does): D on a fixed real batch and on the detached fake, D step, G step
through D. Default: DCGAN-64 (64 px, ngf = ndf = 64, nz 100), batch 128, fp32 with TF32 off
(artgan computes in fp32), eager, cuDNN benchmark mode on.

Modes (combine freely; those that need CUDA are refused with --device cpu):
  --amp             autocast to fp16 + GradScaler (one scaler, updated once per step; Adam
                    fused, so the scaler's inf check stays on the device)
  --cuda-graphs     the whole step captured in one CUDA graph (static input tensors, warm-up on
                    a side stream, capturable Adam) and replayed, as PyTorch documents for
                    whole-network capture
  --channels-last   models and batch in channels-last memory format
  --tf32 on|off|default
                    TF32 for matmuls and cuDNN convolutions: on, off (the default, as artgan
                    computes in fp32), or PyTorch's own defaults left alone (today: cuDNN
                    convolutions on, matmuls off)
  --compile         torch.compile the two networks (the step stays eager)

Timing: 3 warm-up steps (after capture, for graphs), then `--steps` steps (default: up to 30
within 20 s, at least 5), each timed on the wall clock up to a device synchronisation; the
median is reported. Prints
  pytorch/<device>-<modes>/dcgan-<size>px-w<ngf>-b<batch>: median X ms over N runs, Y images/s
(artgan: `train_step/cuda:0-cudnn/dcgan-64px-w64-b128: ...`), then a `RESULT {json}` line.
A smoke check without a GPU: `--device cpu --image-size 32 --ngf 8 --ndf 8 --batch-size 4`.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_cpu_step import discriminator, generator, init, time_steps  # noqa: E402  (the same model)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--tf32", choices=["on", "off", "default"], default="off")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-ema", action="store_true", help="leave out the EMA update (artgan --no-ema)")
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    if args.device == "cpu":
        needs_cuda = [f for f, on in [("--amp", args.amp), ("--cuda-graphs", args.cuda_graphs),
                                      ("--tf32 on", args.tf32 == "on"),
                                      ("--tf32 default", args.tf32 == "default")] if on]
        if needs_cuda:
            p.error(f"{', '.join(needs_cuda)} need(s) a CUDA device (TF32, fp16 autocast with "
                    "GradScaler and CUDA graphs are GPU features): drop them or use --device cuda")
    elif not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no CUDA device here (use --device cpu for a smoke check)")
    if args.cuda_graphs and args.compile:
        p.error("--cuda-graphs and --compile are separate modes: choose one")
    s = args.image_size
    if s < 16 or s & (s - 1):
        p.error(f"--image-size {s}: must be a power of two, at least 16")
    return args


def mode_label(args):
    parts = [("amp" if args.amp else "fp32")]
    if args.device == "cuda":
        parts.append(f"tf32{args.tf32}")
    parts.append("graphs" if args.cuda_graphs else "compile" if args.compile else "eager")
    if args.channels_last:
        parts.append("cl")
    return "-".join(parts)


def make_step(args, dev):
    b, s, nz = args.batch_size, args.image_size, args.nz
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    g = generator(nz, args.ngf, s).to(dev, memory_format=fmt)
    d = discriminator(args.ndf, s).to(dev, memory_format=fmt)
    g.apply(init)
    d.apply(init)
    if args.compile:
        g, d = torch.compile(g), torch.compile(d)
    # Graph capture needs Adam's step count on the device (capturable); AMP uses the fused
    # kernel, which takes the scaler's scale and inf flag on the device (no host read).
    adam = dict(lr=2e-4, betas=(0.5, 0.999))
    if args.cuda_graphs:
        adam["capturable"] = True
    if args.amp:
        adam["fused"] = True
    opt_g = torch.optim.Adam(g.parameters(), **adam)
    opt_d = torch.optim.Adam(d.parameters(), **adam)
    ema = [p.detach().clone() for p in g.parameters()]
    loss = nn.BCEWithLogitsLoss()
    real = (torch.rand(b, 3, s, s, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    ones, zeros = torch.ones(b, device=dev), torch.zeros(b, device=dev)
    noise = torch.empty(b, nz, 1, 1, device=dev)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if args.amp else torch.enable_grad

    def backward_step(l, opt):
        if scaler is None:
            l.backward()
            opt.step()
        else:
            scaler.scale(l).backward()
            scaler.step(opt)

    def step():
        noise.normal_()
        opt_d.zero_grad(set_to_none=False)
        with autocast():
            fake = g(noise)
            loss_d = loss(d(real).view(-1), ones) + loss(d(fake.detach()).view(-1), zeros)
        backward_step(loss_d, opt_d)
        opt_g.zero_grad(set_to_none=False)
        with autocast():
            loss_g = loss(d(fake).view(-1), ones)
        backward_step(loss_g, opt_g)
        if scaler is not None:
            scaler.update()
        if not args.no_ema:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in g.parameters()], 0.01)

    if not args.cuda_graphs:
        return step
    # Whole-step capture: warm up on a side stream (so lazily made state and cuDNN's benchmark
    # choices exist before capture), then capture one step into a graph reading the static
    # `real` and `noise` tensors (noise is redrawn inside the graph) and replay it.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def main():
    args = parse()
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        if args.tf32 != "default":
            tf32 = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        print(f"# torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}, "
              f"{torch.cuda.get_device_name()}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32} "
              f"cudnn {torch.backends.cudnn.allow_tf32}", flush=True)
        sync = torch.cuda.synchronize
    else:
        print(f"# torch {torch.__version__}, CPU, {torch.get_num_threads()} threads (smoke check, "
              "not a GPU figure)", flush=True)
        sync = lambda: None  # noqa: E731
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn = make_step(args, dev)
    times = time_steps(fn, args.steps, sync)
    med = statistics.median(times)
    b = args.batch_size
    name = f"dcgan-{args.image_size}px-w{args.ngf}-b{b}"
    device = "cuda:0" if args.device == "cuda" else "cpu"
    label = f"{device}-{mode_label(args)}"
    print(f"pytorch/{label}/{name}: median {med * 1e3:.2f} ms over {len(times)} runs, "
          f"{b / med:.1f} images/s", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print("RESULT " + json.dumps({
        "impl": f"pytorch-{label}", "config": name, "torch": torch.__version__,
        "ms_per_step": med * 1e3, "images_per_s": b / med, "peak_mem_mib": peak,
        "all_ms": [t * 1e3 for t in times],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
