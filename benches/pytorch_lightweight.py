#!/usr/bin/env python3
"""The PyTorch twin of artgan's `--preset lightweight` (src/nn/lightweight.rs) and its replay of
an artgan trace: the engine-truth check for the preset's ops (GLU, nearest upsampling, adaptive
pooling, the SLE channel gate, spectral norm, DiffAugment, crop, L1, hinge).

The modules have artgan's structure and state-dict names (`init.0.weight`, `feat_8.1.weight`,
`se_16.main.1.weight`, `down_from_big.0.weight_orig`, `decoder_part.main.5.weight_u`, ...), so
artgan's safetensors load by name with strict=True. D's convolutions use PyTorch's own
`torch.nn.utils.spectral_norm` (one power iteration per training forward, eps 1e-12, no
gradient through u and v): the semantics artgan's `SpectralNormConv2d` claims.

    pytorch_lightweight.py replay TRACE_DIR [--dtype float32|float64] --out OUT
    pytorch_lightweight.py check TRACE_DIR [--strict]
    pytorch_lightweight.py mutants TRACE_DIR

`replay` loads `TRACE_DIR` (written by `cargo bench --bench twin_trace -- --out TRACE_DIR`): the
recipe (`twin.json`), G's and D's initial state dicts, and per step the real batch, the latents,
the three DiffAugment parameter sets (D real, D fake, G fake) and the decoder's quarter. It runs
the same steps as artgan's `Trainer::device_step` (D on the augmented real batch with the
reconstruction loss, G's fake detached through D, D's hinge + reconstruction loss, Adam on D;
then D on a fresh augmentation of the same fake, G's hinge loss, Adam on G), with
torch.optim.Adam at artgan's lr, betas and eps, and writes the per-step losses (OUT.json) and the
final state dicts (OUT.npz). `--dtype float64` runs the replay in double precision: the
reference both float32 engines are measured against.

`check` compares artgan's losses and final weights and the float32 replay's
(TRACE_DIR/torch-float32.*) with the float64 replay's (TRACE_DIR/torch-float64.*), prints the
tables and exits 1 beyond the bound (derived in scripts/twin-check, which runs all of this).
`mutants` replays a one-step trace with planted errors (translation sign, GLU halves swapped, SLE
slope 0.2, BN momentum 0.2) in place of artgan's run and exits 1 unless the check fails each.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# FastGAN's nfc_multi (src/nn/lightweight.rs CHANNEL_TABLE).
CHANNEL_TABLE = {4: 16.0, 8: 8.0, 16: 4.0, 32: 2.0, 64: 2.0, 128: 1.0, 256: 0.5, 512: 0.25, 1024: 0.125}
SLE_SLOPE = 0.1
D_SLOPE = 0.2
SN_EPS = 1e-12


def channels(res, width):
    return max(int(CHANNEL_TABLE.get(res, 0.125) * width), 1)


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (F32 and I64 only; no dependency)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "I64": np.int64}[info["dtype"]]
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=dtype).reshape(info["shape"])
    return out


def sn_conv(c_in, c_out, k, stride, pad):
    return nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), eps=SN_EPS)


def up_block(c_in, c_out, spectral):
    conv = sn_conv(c_in, 2 * c_out, 3, 1, 1) if spectral else nn.Conv2d(c_in, 2 * c_out, 3, 1, 1, bias=False)
    return [nn.Upsample(scale_factor=2, mode="nearest"), conv, nn.BatchNorm2d(2 * c_out), nn.GLU(dim=1)]


class Excitation(nn.Module):
    def __init__(self, c_from, c_to):
        super().__init__()
        self.main = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(c_from, c_to, 4, 1, 0, bias=False),
            nn.LeakyReLU(SLE_SLOPE),
            nn.Conv2d(c_to, c_to, 1, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.main(x)


class LightGenerator(nn.Module):
    def __init__(self, size, nz, ngf):
        super().__init__()
        self.size = size
        ch = lambda r: channels(r, ngf)  # noqa: E731
        self.init = nn.Sequential(
            nn.ConvTranspose2d(nz, 2 * ch(4), 4, 1, 0, bias=False), nn.BatchNorm2d(2 * ch(4)), nn.GLU(dim=1)
        )
        r = 8
        while r <= size:
            setattr(self, f"feat_{r}", nn.Sequential(*up_block(ch(r // 2), ch(r), False)))
            r *= 2
        to = 16
        while to <= size:
            setattr(self, f"se_{to}", Excitation(ch(to // 4), ch(to)))
            to *= 2
        self.to_big = nn.Sequential(nn.Conv2d(ch(size), 3, 3, 1, 1, bias=False), nn.Tanh())

    def forward(self, z):
        feats = {4: self.init(z)}
        r = 8
        while r <= self.size:
            h = getattr(self, f"feat_{r}")(feats[r // 2])
            if r >= 16:
                h = h * getattr(self, f"se_{r}")(feats[r // 4])
            feats[r] = h
            r *= 2
        return self.to_big(feats[self.size])


class Decoder(nn.Module):
    """FastGAN's SimpleDecoder: up blocks from 8×8 to `out` px, conv 3×3 to RGB, tanh."""

    def __init__(self, c_in, out, ndf):
        super().__init__()
        layers, r, c = [], 8, c_in
        while r < out:
            r *= 2
            layers += up_block(c, channels(r, ndf), True)
            c = channels(r, ndf)
        layers += [sn_conv(c, 3, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x)


class LightDiscriminator(nn.Module):
    def __init__(self, size, ndf):
        super().__init__()
        self.size = size
        ch = lambda r: channels(2 * r, ndf)  # noqa: E731
        self.down_from_big = nn.Sequential(sn_conv(3, ch(size), 3, 1, 1), nn.LeakyReLU(D_SLOPE))
        self.down_res = []
        r = size // 2
        while r >= 8:
            block = nn.Sequential(sn_conv(ch(2 * r), ch(r), 4, 2, 1), nn.BatchNorm2d(ch(r)), nn.LeakyReLU(D_SLOPE))
            setattr(self, f"down_{r}", block)
            self.down_res.append(r)
            r //= 2
        self.rf_big = nn.Sequential(
            sn_conv(ch(8), ch(4), 1, 1, 0), nn.BatchNorm2d(ch(4)), nn.LeakyReLU(D_SLOPE), sn_conv(ch(4), 1, 4, 1, 0)
        )
        self.decoder_big = Decoder(ch(8), size // 2, ndf)
        self.decoder_part = Decoder(ch(16), size // 2, ndf)

    def features(self, x):
        h = self.down_from_big(x)
        feat_16 = None
        for r in self.down_res:
            h = getattr(self, f"down_{r}")(h)
            if r == 16:
                feat_16 = h
        return feat_16, h

    def logits(self, feat_8):
        return self.rf_big(feat_8).flatten(1).mean(1)

    def forward(self, x):
        return self.logits(self.features(x)[1])

    def reconstruction_loss(self, x, feat_16, feat_8, quarter):
        half = self.size // 2
        whole = F.l1_loss(self.decoder_big(feat_8), F.adaptive_avg_pool2d(x, half))
        top, left = (quarter // 2) * 8, (quarter % 2) * 8
        rec_part = self.decoder_part(feat_16[:, :, top:top + 8, left:left + 8])
        top, left = (quarter // 2) * half, (quarter % 2) * half
        return whole + F.l1_loss(rec_part, x[:, :, top:top + half, left:left + half])


def diff_augment(x, policy, color, shifts, boxes):
    """DiffAugment with given per-image parameters (artgan's `ops::diff_augment_by`): colour
    (brightness shift, saturation and contrast factors), translation out[i, j] = x[i + sy, j + sx]
    with zeros outside, cutout zero inside boxes (y0, y1, x0, x1), in that order."""
    if "color" in policy:
        b, s, k = (color[:, i].view(-1, 1, 1, 1) for i in range(3))
        x = x + b
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * s + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * k + m
    n, _, h, w = x.shape
    if "translation" in policy:
        p = int(shifts.abs().max().item()) if shifts.numel() else 0
        xp = F.pad(x, (p, p, p, p))
        rows = []
        for i in range(n):
            sy, sx = int(shifts[i, 0]), int(shifts[i, 1])
            rows.append(xp[i, :, p + sy:p + sy + h, p + sx:p + sx + w])
        x = torch.stack(rows)
    if "cutout" in policy:
        mask = torch.ones_like(x)
        for i in range(n):
            y0, y1, x0, x1 = (int(v) for v in boxes[i])
            mask[i, :, y0:y1, x0:x1] = 0
        x = x * mask
    return x


def load_state(module, tensors, dtype):
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(state, strict=True)


def write_safetensors(path, tensors):
    """Writes {name: numpy array} (float32, int64) as a safetensors file."""
    header, blobs, at = {}, [], 0
    for name, v in tensors.items():
        data = np.ascontiguousarray(v).tobytes()
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[v.dtype]
        header[name] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def state_arrays(module):
    return {k: v.detach().to(torch.float64).numpy() for k, v in module.state_dict().items()}


class SwappedGLU(nn.GLU):
    """A mutant: the gate taken from the first half instead of the second."""

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return b * torch.sigmoid(a)


def mutate(g, d, mutation):
    """Plants `mutation` (one of MUTATIONS) in the twin: what `mutants` checks the check catches."""
    for m in [*g.modules(), *d.modules()]:
        if mutation == "bn-momentum" and isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.2
        if mutation == "sle-slope" and isinstance(m, nn.LeakyReLU) and m.negative_slope == SLE_SLOPE:
            m.negative_slope = 0.2
        if mutation == "glu-halves" and isinstance(m, nn.GLU):
            m.__class__ = SwappedGLU


MUTATIONS = ("translation-sign", "glu-halves", "sle-slope", "bn-momentum")


def replay(trace_dir, dtype, mutation=None):
    with open(os.path.join(trace_dir, "twin.json")) as f:
        recipe = json.load(f)
    if recipe["preset"] != "lightweight" or recipe["loss"] != "hinge":
        sys.exit(f"error: {trace_dir}/twin.json: the twin replays lightweight with the hinge loss, got {recipe}")
    size, nz, b = recipe["image_size"], recipe["nz"], recipe["batch_size"]
    policy = recipe["diffaugment"].split(",")
    g = LightGenerator(size, nz, recipe["ngf"]).to(dtype)
    d = LightDiscriminator(size, recipe["ndf"]).to(dtype)
    load_state(g, read_safetensors(os.path.join(trace_dir, "generator_init.safetensors")), dtype)
    load_state(d, read_safetensors(os.path.join(trace_dir, "discriminator_init.safetensors")), dtype)
    g.train()
    d.train()
    mutate(g, d, mutation)
    betas = (recipe["beta1"], recipe["beta2"])
    eps = recipe["adam_eps"]
    opt_d = torch.optim.Adam(d.parameters(), lr=recipe["lr_d"], betas=betas, eps=eps, foreach=False)
    opt_g = torch.optim.Adam(g.parameters(), lr=recipe["lr_g"], betas=betas, eps=eps, foreach=False)
    t = {k: torch.from_numpy(v.copy()).to(dtype) for k, v in read_safetensors(os.path.join(trace_dir, "trace.safetensors")).items()}
    steps = recipe["steps"]
    rec_w = recipe["reconstruction_weight"]
    losses = {"loss_d": [], "loss_g": [], "reconstruction": []}
    for i in range(steps):
        real, z = t["real"][i], t["z"][i].view(b, nz, 1, 1)
        quarter = int(t["quarter"][i])
        sign = -1 if mutation == "translation-sign" else 1
        aug = [(t["color"][i, k], sign * t["shifts"][i, k], t["boxes"][i, k]) for k in range(3)]
        # ---- D step (artgan's Trainer::device_step)
        opt_d.zero_grad(set_to_none=True)
        real_in = diff_augment(real, policy, *aug[0])
        feat_16, feat_8 = d.features(real_in)
        out_real = d.logits(feat_8)
        rec = d.reconstruction_loss(real_in, feat_16, feat_8, quarter)
        loss_real = F.relu(1 - out_real).mean() + rec_w * rec
        fake = g(z)
        out_fake = d(diff_augment(fake.detach(), policy, *aug[1]))
        loss_d = loss_real + F.relu(1 + out_fake).mean()
        loss_d.backward()
        opt_d.step()
        # ---- G step: D frozen, a fresh augmentation of the same fake
        opt_g.zero_grad(set_to_none=True)
        for p in d.parameters():
            p.requires_grad_(False)
        loss_g = -d(diff_augment(fake, policy, *aug[2])).mean()
        loss_g.backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        losses["loss_d"].append(loss_d.item())
        losses["loss_g"].append(loss_g.item())
        losses["reconstruction"].append(rec.item())
    return losses, state_arrays(g), state_arrays(d)


# ---- the check (scripts/twin-check): artgan and PyTorch f32 against the PyTorch f64 replay

# Step 0: one forward of every op on identical weights and inputs (and, for loss_g, one D update):
# f32 results a few ulps apart per op, ~1e-6 relative after ~40 ops; 1e-5 leaves a margin.
FIRST_STEP_REL = 1e-5
# Later steps: artgan's error may be this many times the larger of PyTorch f32's own error
# envelope and the allowance for a kink crossed by one engine only: a jump of KINK_JUMP at the
# next step, growing KINK_GROWTH times a step.
ENVELOPE_FACTOR = 10.0
KINK_JUMP = 1e-3
KINK_GROWTH = 4.0
# Trained weights after N steps: RMS error per network at most this many times PyTorch f32's.
RMS_FACTOR = 3.0
# One-step (--strict) traces: per tensor, the values beyond float rounding may be one, or this
# fraction of them.
STRICT_FRACTION = 1e-2


def rel(x, ref):
    # Losses near 0 (G's hinge loss crosses it) are judged against 1e-2, not against ~0.
    return abs(x - ref) / max(abs(ref), 1e-2)


def check(trace_dir, strict):
    """Prints the comparison and returns the list of failed criteria (empty: within the bound)."""
    with open(os.path.join(trace_dir, "twin.json")) as f:
        recipe = json.load(f)
    steps, lr = recipe["steps"], max(recipe["lr_d"], recipe["lr_g"])
    art = read_safetensors(os.path.join(trace_dir, "trace.safetensors"))
    runs = {}
    for dt in ("float32", "float64"):
        with open(os.path.join(trace_dir, f"torch-{dt}.json")) as f:
            runs[dt] = (json.load(f), np.load(os.path.join(trace_dir, f"torch-{dt}.npz")))
    (l32, w32), (l64, w64) = runs["float32"], runs["float64"]
    keys = ("loss_d", "loss_g", "reconstruction")
    failed = []
    print(f"{trace_dir}: {steps} steps; relative error against the PyTorch float64 replay "
          "(denominator max(|f64|, 1e-2)); envelope = the largest PyTorch float32 error so far")
    print(f"{'step':>4} {'loss_d':>10} {'loss_g':>10} {'rec':>10} | {'artgan':>8} {'torch32':>8} "
          f"{'envelope':>8} {'ratio':>6}")
    envelope, worst_ratio, worst_of_bound = 0.0, 0.0, 0.0
    for i in range(steps):
        e_art = max(rel(float(art[k][i]), l64[k][i]) for k in keys)
        e_t32 = max(rel(l32[k][i], l64[k][i]) for k in keys)
        envelope = max(envelope, e_t32)
        kink = KINK_JUMP * KINK_GROWTH ** (i - 1)
        bound = FIRST_STEP_REL if i == 0 else ENVELOPE_FACTOR * max(envelope, kink)
        ratio = e_art / max(envelope, 1e-30)
        worst_ratio = max(worst_ratio, ratio if i else 0.0)
        worst_of_bound = max(worst_of_bound, e_art / bound)
        flag = "" if e_art <= bound else "  <-- beyond the bound"
        if flag:
            failed.append(f"step {i}: losses {e_art:.2e} from float64, bound {bound:.2e}")
        print(f"{i:4d} {float(art['loss_d'][i]):10.6f} {float(art['loss_g'][i]):10.6f} "
              f"{float(art['reconstruction'][i]):10.6f} | {e_art:8.1e} {e_t32:8.1e} {envelope:8.1e} "
              f"{ratio:6.2f}{flag}")
    print(f"losses: bound step 0: {FIRST_STEP_REL:.0e}; step k >= 1: {ENVELOPE_FACTOR:.0f}x the larger "
          f"of the envelope and {KINK_JUMP:.0e}·{KINK_GROWTH:.0f}^(k-1). Worst artgan/envelope "
          f"ratio (steps 1..) {worst_ratio:.2f}; worst error/bound {worst_of_bound:.3f}")

    print(f"\n{'tensor':40s} {'n':>7} {'max art':>8} {'max t32':>8} {'rms art':>8} {'rms t32':>8} "
          f"{'off‰ art':>8} {'off‰ t32':>8}  (differences from float64; off: beyond 2e-6 + 1e-3|w|)")
    sq = {}
    for net in ("generator", "discriminator"):
        final = read_safetensors(os.path.join(trace_dir, f"{net}_final.safetensors"))
        n_sq = [0.0, 0.0, 0]
        # (values beyond rounding, values) for artgan and PyTorch f32: trained, buffers.
        off = {True: [0, 0, 0], False: [0, 0, 0]}
        for name, value in final.items():
            y = w64[f"{net[0]}/{name}"]
            x32 = w32[f"{net[0]}/{name}"]
            if value.dtype == np.int64:
                if not (value == y).all():
                    failed.append(f"{net} {name}: {value} against {y}")
                continue
            a = value.astype(np.float64)
            da, dt = np.abs(a - y), np.abs(x32 - y)
            tol = 2e-6 + 1e-3 * np.abs(y)
            off_a, off_t = (da > tol).mean(), (dt > tol).mean()
            trained = not ("running_" in name or name.endswith(("_u", "_v")))
            kind = "" if trained else "  (buffer)"
            n_off = int((da > tol).sum())
            off[trained][0] += n_off
            if strict and n_off > max(1, STRICT_FRACTION * a.size):
                failed.append(f"{net} {name}: {n_off} of {a.size} values beyond float rounding")
            off[trained][1] += int((dt > tol).sum())
            off[trained][2] += a.size
            print(f"{net[0]}/{name:38s} {a.size:7d} {da.max():8.1e} {dt.max():8.1e} "
                  f"{np.sqrt((da ** 2).mean()):8.1e} {np.sqrt((dt ** 2).mean()):8.1e} "
                  f"{off_a * 1000:8.2f} {off_t * 1000:8.2f}{kind}")
            if not trained:
                continue
            if da.max() > 2 * lr * steps:
                failed.append(f"{net} {name}: a weight {da.max():.2e} from float64, beyond 2·lr·steps")
            n_sq[0] += (da ** 2).sum()
            n_sq[1] += (dt ** 2).sum()
            n_sq[2] += a.size
        rms_a, rms_t = np.sqrt(n_sq[0] / n_sq[2]), np.sqrt(n_sq[1] / n_sq[2])
        sq[net] = (rms_a, rms_t)
        for trained, (oa, ot, n) in off.items():
            what = "trained weights" if trained else "buffers"
            print(f"{net} {what}: beyond float rounding: artgan {oa} of {n} ({oa / n * 1000:.2f}‰), "
                  f"PyTorch float32 {ot} ({ot / n * 1000:.2f}‰)")
        if not strict and rms_a > RMS_FACTOR * rms_t + 2e-6:
            failed.append(f"{net}: weight RMS error {rms_a:.2e}, PyTorch float32's {rms_t:.2e}")
    for net, (rms_a, rms_t) in sq.items():
        print(f"{net}: trained weights' RMS difference from float64: artgan {rms_a:.2e}, PyTorch "
              f"float32 {rms_t:.2e} (ratio {rms_a / max(rms_t, 1e-30):.2f}"
              f"{'; judged by the values beyond rounding' if strict else f', bound {RMS_FACTOR:.0f}'})")
    return failed


def mutants(trace_dir):
    """Each mutation replayed in float32 as if it were artgan's run, judged by the one-step
    check against the real replays: returns the mutations the check did not catch."""
    import shutil
    import tempfile
    missed = []
    for mutation in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "trace")
            shutil.copytree(trace_dir, dst)
            losses, g, d = replay(dst, torch.float32, mutation)
            trace = dict(read_safetensors(os.path.join(dst, "trace.safetensors")))
            trace.update({k: np.array(v, dtype=np.float32) for k, v in losses.items()})
            write_safetensors(os.path.join(dst, "trace.safetensors"), trace)
            for net, state in (("generator", g), ("discriminator", d)):
                state = {k: v.astype(np.int64 if k.endswith("num_batches_tracked") else np.float32)
                         for k, v in state.items()}
                write_safetensors(os.path.join(dst, f"{net}_final.safetensors"), state)
            with open(os.devnull, "w") as quiet:
                stdout, sys.stdout = sys.stdout, quiet
                try:
                    failed = check(dst, strict=True)
                finally:
                    sys.stdout = stdout
        print(f"mutant {mutation}: {len(failed)} failures" + ("" if failed else "  <-- NOT CAUGHT"))
        if not failed:
            missed.append(mutation)
    return missed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("replay", help="replay an artgan trace")
    r.add_argument("trace_dir")
    r.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    r.add_argument("--out", required=True, help="writes OUT.json (losses) and OUT.npz (final state dicts)")
    c = sub.add_parser("check", help="compare a trace with its float32 and float64 replays")
    c.add_argument("trace_dir")
    c.add_argument("--strict", action="store_true",
                   help="a one-step trace: judge the values beyond float rounding, not the RMS")
    m = sub.add_parser("mutants", help="check that the one-step check catches planted errors")
    m.add_argument("trace_dir", help="a one-step trace with its float32 and float64 replays")
    args = p.parse_args()
    if args.mode == "mutants":
        missed = mutants(args.trace_dir)
        sys.exit(1 if missed else 0)
    if args.mode == "check":
        failed = check(args.trace_dir, args.strict)
        for f in failed:
            print(f"FAIL {f}")
        print(f"{args.trace_dir}: {'within the bound' if not failed else f'{len(failed)} beyond the bound'}")
        sys.exit(1 if failed else 0)
    torch.use_deterministic_algorithms(True)
    dtype = getattr(torch, args.dtype)
    losses, g, d = replay(args.trace_dir, dtype)
    with open(args.out + ".json", "w") as f:
        json.dump({"dtype": args.dtype, "torch": torch.__version__, **losses}, f)
    np.savez(args.out + ".npz", **{"g/" + k: v for k, v in g.items()}, **{"d/" + k: v for k, v in d.items()})


if __name__ == "__main__":
    main()
