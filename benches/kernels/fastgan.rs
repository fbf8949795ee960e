//! The rows of `benches/kernels.rs` for the ops FastGAN adds: resampling, the channel gate and
//! the reconstruction losses.

use super::Bench;
use artgan::backend::{ChannelDims, ImageDims, PairLoss, Window};

impl Bench {
    /// FastGAN's resampling ops (`--filter resample`), channel gate (`--filter channel_gate`)
    /// and reconstruction losses (`--filter l1`, `--filter mse`) at FastGAN-256 shapes.
    pub(super) fn fastgan_ops(&mut self, n: usize) {
        let b = self.be.clone();
        let bytes = |elements: usize| (elements * 4) as f64;
        // A generator block's upsampling, 256 channels 16x16 to 32x32.
        let d = ImageDims {
            n,
            c: 256,
            h: 16,
            w: 16,
        };
        if self.wants("resample upsample") {
            let (x, dy) = (
                self.data(d.len(), -1.0, 1.0),
                self.data(4 * d.len(), -1.0, 1.0),
            );
            let t = self.time(|| drop(b.upsample_nearest(&x, d, 2).unwrap()));
            self.report(
                "resample upsample fwd",
                "256 @16->32",
                t,
                bytes(5 * d.len()),
                None,
            );
            let t = self.time(|| drop(b.upsample_nearest_backward(&dy, d, 2).unwrap()));
            self.report(
                "resample upsample bwd",
                "256 @16->32",
                t,
                bytes(5 * d.len()),
                None,
            );
        }
        // Skip-layer excitation's pooling, 512 channels 8x8 to 4x4.
        let d = ImageDims {
            n,
            c: 512,
            h: 8,
            w: 8,
        };
        if self.wants("resample adaptive_avg_pool") {
            let (x, dy) = (
                self.data(d.len(), -1.0, 1.0),
                self.data(d.len() / 4, -1.0, 1.0),
            );
            let moved = bytes(d.len() + d.len() / 4); // reads one side, writes the other
            let t = self.time(|| drop(b.adaptive_avg_pool(&x, d, 4, 4).unwrap()));
            self.report(
                "resample adaptive_avg_pool fwd",
                "512 @8->4",
                t,
                moved,
                None,
            );
            let t = self.time(|| drop(b.adaptive_avg_pool_backward(&dy, d, 4, 4).unwrap()));
            self.report(
                "resample adaptive_avg_pool bwd",
                "512 @8->4",
                t,
                moved,
                None,
            );
        }
        // D's random quarter of a 256-channel 16x16 feature map.
        let d = ImageDims {
            n,
            c: 256,
            h: 16,
            w: 16,
        };
        let win = Window {
            top: 8,
            left: 0,
            h: 8,
            w: 8,
        };
        if self.wants("resample crop") {
            let (x, dy) = (
                self.data(d.len(), -1.0, 1.0),
                self.data(d.len() / 4, -1.0, 1.0),
            );
            let t = self.time(|| drop(b.crop(&x, d, win).unwrap()));
            self.report(
                "resample crop fwd",
                "256 @16 quarter",
                t,
                bytes(d.len() / 2),
                None,
            );
            let t = self.time(|| drop(b.crop_backward(&dy, d, win).unwrap()));
            let moved = bytes(d.len() + d.len() / 4); // reads the window, writes every dx
            self.report("resample crop bwd", "256 @16 quarter", t, moved, None);
        }
        // The gate on a 128-channel 64x64 map.
        let d = ChannelDims {
            n,
            c: 128,
            hw: 64 * 64,
        };
        if self.wants("channel_gate") {
            let (x, dy) = (self.data(d.len(), -1.0, 1.0), self.data(d.len(), -1.0, 1.0));
            let g = self.data(n * d.c, 0.0, 1.0);
            let t = self.time(|| drop(b.channel_gate(&x, &g, d).unwrap()));
            self.report("channel_gate fwd", "128 @64", t, bytes(2 * d.len()), None);
            let t = self.time(|| drop(b.channel_gate_backward(&x, &g, &dy, d).unwrap()));
            self.report("channel_gate bwd", "128 @64", t, bytes(3 * d.len()), None);
        }
        // The reconstruction loss on 128x128 RGB images (reads a and b, writes the gradient).
        let len = n * 3 * 128 * 128;
        for (name, kind) in [("l1_loss", PairLoss::L1), ("mse_loss", PairLoss::Mse)] {
            if self.wants(name) {
                let (a, c) = (self.data(len, -1.0, 1.0), self.data(len, -1.0, 1.0));
                let t = self.time(|| drop(b.pair_loss(&a, &c, kind).unwrap()));
                self.report(
                    &format!("{name} fwd+bwd"),
                    "3 @128",
                    t,
                    bytes(3 * len),
                    None,
                );
            }
        }
    }
}
