//! The batch-norm rows of `benches/kernels.rs`: plain, fused with its activation, and fused on
//! f16 activations (amp).

use super::Bench;
use artgan::backend::{BatchNormAct, ChannelDims, Storage};

impl Bench {
    /// Plain batch norm, then fused with `act` (the activation that follows it in the model),
    /// then the fused one on f16 activations (amp) (`--filter f16` selects only those).
    pub(super) fn batch_norm(&mut self, d: ChannelDims, act: BatchNormAct, shape: &str) {
        // A filter that selects the f32 rows ("batch_norm") selects the f16 ones too.
        if !self.wants("batch_norm f16") {
            return;
        }
        let b = self.be.clone();
        let x = self.data(d.len(), -1.0, 3.0);
        let dy = self.data(d.len(), -1.0, 1.0);
        let (gamma, beta) = (self.data(d.c, 0.5, 1.5), self.data(d.c, -0.5, 0.5));
        let (mut rm, mut rv) = (self.data(d.c, -0.1, 0.1), self.data(d.c, 0.5, 1.5));
        let f = (d.len() * 4) as f64;
        let name = match act {
            BatchNormAct::None => "bn",
            BatchNormAct::Relu => "bn+relu",
            BatchNormAct::LeakyRelu(_) => "bn+leaky_relu",
        };
        if !self.wants("batch_norm") {
            self.batch_norm_f16(
                d,
                act,
                name,
                shape,
                [&x, &dy, &gamma, &beta],
                [&mut rm, &mut rv],
            );
            return;
        }
        // Statistics read x twice (mean, then centred squares), the apply pass once more.
        let t = self.time(|| {
            drop(
                b.batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, d, 0.1, 1e-5)
                    .unwrap(),
            )
        });
        self.report("batch_norm_train", shape, t, 4.0 * f, None);
        let saved = b
            .batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, d, 0.1, 1e-5)
            .unwrap();
        let t = self.time(|| {
            drop(
                b.batch_norm_backward(&x, &dy, &gamma, &saved.mean, &saved.invstd, d)
                    .unwrap(),
            )
        });
        // Reduce pass reads x and dy, dx pass reads both again and writes dx.
        self.report("batch_norm_backward", shape, t, 5.0 * f, None);
        let t = self.time(|| {
            drop(
                b.batch_norm_eval(&x, &gamma, &beta, &rm, &rv, d, 1e-5)
                    .unwrap(),
            )
        });
        self.report("batch_norm_eval", shape, t, 2.0 * f, None);
        // Fused with the activation: the same passes and bytes as the plain op, and no separate
        // activation pass (2f forward, 3f backward) nor stored pre-activation.
        let t = self.time(|| {
            drop(
                b.batch_norm_act_train(&x, &gamma, &beta, &mut rm, &mut rv, d, 0.1, 1e-5, act)
                    .unwrap(),
            )
        });
        self.report(&format!("{name} train"), shape, t, 4.0 * f, None);
        let t = self.time(|| {
            drop(
                b.batch_norm_act_backward(
                    &x,
                    &dy,
                    &gamma,
                    &beta,
                    &saved.mean,
                    &saved.invstd,
                    d,
                    act,
                    true,
                )
                .unwrap(),
            )
        });
        self.report(&format!("{name} backward"), shape, t, 5.0 * f, None);
        let t = self.time(|| {
            drop(
                b.batch_norm_act_eval(&x, &gamma, &beta, &rm, &rv, d, 1e-5, act)
                    .unwrap(),
            )
        });
        self.report(&format!("{name} eval"), shape, t, 2.0 * f, None);
        self.batch_norm_f16(
            d,
            act,
            name,
            shape,
            [&x, &dy, &gamma, &beta],
            [&mut rm, &mut rv],
        );
    }

    /// The fused batch norm's training forward and backward on f16 x and dy (amp): the f32
    /// rows' passes at 2 bytes an element, plus the f32 per-channel vectors at 4.
    fn batch_norm_f16(
        &mut self,
        d: ChannelDims,
        act: BatchNormAct,
        name: &str,
        shape: &str,
        [x, dy, gamma, beta]: [&Storage; 4],
        [rm, rv]: [&mut Storage; 2],
    ) {
        let b = self.be.clone();
        let (x, dy) = (self.f16(x), self.f16(dy));
        let (h, c) = ((d.len() * 2) as f64, (d.c * 4) as f64);
        // x read three times, y written; running mean and var read and written, mean and invstd
        // written then read with gamma and beta.
        let t = self.time(|| {
            drop(
                b.batch_norm_act_train(&x, gamma, beta, rm, rv, d, 0.1, 1e-5, act)
                    .unwrap(),
            )
        });
        self.report(
            &format!("{name} train f16"),
            shape,
            t,
            4.0 * h + 10.0 * c,
            None,
        );
        let saved = b
            .batch_norm_act_train(&x, gamma, beta, rm, rv, d, 0.1, 1e-5, act)
            .unwrap();
        // x and dy read twice, dx written; gamma, beta, mean, invstd read by both passes,
        // dgamma and dbeta written then read.
        let t = self.time(|| {
            drop(
                b.batch_norm_act_backward(
                    &x,
                    &dy,
                    gamma,
                    beta,
                    &saved.mean,
                    &saved.invstd,
                    d,
                    act,
                    true,
                )
                .unwrap(),
            )
        });
        self.report(
            &format!("{name} backward f16"),
            shape,
            t,
            5.0 * h + 12.0 * c,
            None,
        );
    }
}
