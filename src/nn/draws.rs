//! The host draws of a training step's device half (dropout and input-noise seeds, DiffAugment
//! parameters, the lightweight D's reconstruction quarter) kept in device buffers, so that a CUDA graph of the step (`train::graph_step`)
//! replays each step's own values instead of those seen at capture.
//!
//! The host draws exactly what an ordinary step draws, from the same stream in the same
//! order, so the values (and the CPU's results) do not change; only where the kernels read
//! them from does. Per batch shape the sequence of draws is fixed: the first step of a shape
//! records it ([`StepDraws::recording`]: each draw gets a slot and its device buffer, written
//! as it is drawn); before every later step [`StepDraws::prefill`] draws the whole sequence
//! and writes each slot's buffer (before the device half, where host-to-device copies are
//! legal), and the step then takes its values from the slots in order. That is one small
//! host-to-device copy per seed and four per DiffAugment call (a single copy of all of them
//! would need the kernels to read at an offset; not done).

use super::lightweight::QuarterWeights;
use crate::backend::{seed_values, Device};
use crate::ops::{self, DiffAugmentBuffers, Seed};
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{bail, Result};

/// The draws of one batch shape's step (see the module doc).
pub struct StepDraws {
    device: Device,
    slots: Vec<Slot>,
    /// Recording: draws are made now and appended; otherwise they are taken from `slots`.
    recording: bool,
    /// The next slot to take.
    next: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Dropout,
    /// Input noise of this std.
    Noise(f32),
    /// DiffAugment of a batch of `n` images of `h`×`w`, images `first..first + n` of the
    /// whole batch (a part on one GPU of several).
    DiffAugment {
        first: usize,
        n: usize,
        h: usize,
        w: usize,
    },
    /// The quarter D's part decoder reconstructs, for `n` samples of `c` feature channels.
    Quarter {
        n: usize,
        c: usize,
    },
}

struct Slot {
    kind: Kind,
    seed: u64,
    values: Values,
}

enum Values {
    /// [`seed_values`].
    Seed(Tensor),
    DiffAugment(DiffAugmentBuffers),
    Quarter(QuarterWeights),
}

impl StepDraws {
    /// Draws of a shape not seen yet: the next step records them.
    pub fn recording(device: Device) -> Self {
        StepDraws {
            device,
            slots: Vec::new(),
            recording: true,
            next: 0,
        }
    }

    /// Draws the recorded sequence from `rng` for the next step and writes it to the device
    /// (`noise_std`: the std every input-noise draw of the step uses).
    pub fn prefill(&mut self, rng: &mut Rng, noise_std: f32) -> Result<()> {
        self.recording = false;
        self.next = 0;
        for slot in &mut self.slots {
            slot.seed = rng.next_u64();
            match (&mut slot.kind, &mut slot.values) {
                (Kind::Dropout, Values::Seed(t)) => write(t, &seed_values(slot.seed, 0.0))?,
                (Kind::Noise(std), Values::Seed(t)) => {
                    *std = noise_std;
                    write(t, &seed_values(slot.seed, noise_std))?
                }
                (Kind::DiffAugment { first, n, h, w }, Values::DiffAugment(b)) => {
                    b.write(&ops::diffaug_params(slot.seed, *first, *n, *h, *w))?
                }
                (Kind::Quarter { .. }, Values::Quarter(q)) => q.set(quarter_of(slot.seed))?,
                _ => unreachable!("a slot's values match its kind"),
            }
        }
        Ok(())
    }

    /// Whether the step took every prefilled draw (a replay would otherwise be wrong).
    pub fn all_taken(&self) -> bool {
        self.recording || self.next == self.slots.len()
    }

    /// The seed of a dropout mask (`noise_std: None`) or of input noise of that std.
    pub fn seed(&mut self, rng: &mut Rng, noise_std: Option<f32>) -> Result<Seed> {
        let kind = noise_std.map_or(Kind::Dropout, Kind::Noise);
        if self.recording {
            let seed = rng.next_u64();
            let v = seed_values(seed, noise_std.unwrap_or(0.0));
            let t = Tensor::from_vec(v.to_vec(), &[v.len()], self.device)?;
            self.slots.push(Slot {
                kind,
                seed,
                values: Values::Seed(t),
            });
        }
        match self.take(kind)? {
            Slot {
                seed,
                values: Values::Seed(t),
                ..
            } => Ok(Seed {
                value: *seed,
                on_device: Some(t.clone()),
                part: 0,
            }),
            _ => unreachable!("a slot's values match its kind"),
        }
    }

    /// DiffAugment of `x` under `policy`, its parameters drawn from `rng` (those of images
    /// `first..` of the whole batch: see [`ops::diff_augment_part`]).
    pub fn diff_augment(
        &mut self,
        rng: &mut Rng,
        x: &Tensor,
        policy: ops::DiffAugment,
        first: usize,
    ) -> Result<Tensor> {
        let (n, h, w) = match *x.shape() {
            [n, _, h, w] => (n, h, w),
            ref s => bail!("diff_augment: expected [N, C, H, W], got {s:?}"),
        };
        let kind = Kind::DiffAugment { first, n, h, w };
        if self.recording {
            let seed = rng.next_u64();
            let p = ops::diffaug_params(seed, first, n, h, w);
            self.slots.push(Slot {
                kind,
                seed,
                values: Values::DiffAugment(DiffAugmentBuffers::new(&p, self.device)?),
            });
        }
        match self.take(kind)? {
            Slot {
                values: Values::DiffAugment(b),
                ..
            } => ops::diff_augment_by(x, policy, b),
            _ => unreachable!("a slot's values match its kind"),
        }
    }

    /// The quarter D's part decoder reconstructs this step, for `n` samples whose 16×16
    /// features have `c` channels (drawn as [`quarter_of`] one value of `rng`).
    pub fn quarter(&mut self, rng: &mut Rng, n: usize, c: usize) -> Result<QuarterWeights> {
        let kind = Kind::Quarter { n, c };
        if self.recording {
            let seed = rng.next_u64();
            let q = QuarterWeights::new(quarter_of(seed), n, c, self.device)?;
            self.slots.push(Slot {
                kind,
                seed,
                values: Values::Quarter(q),
            });
        }
        match self.take(kind)? {
            Slot {
                values: Values::Quarter(q),
                ..
            } => Ok(q.clone()),
            _ => unreachable!("a slot's values match its kind"),
        }
    }

    fn take(&mut self, kind: Kind) -> Result<&Slot> {
        let Some(slot) = self.slots.get(self.next) else {
            bail!("the step draws more host values than its first step of this shape did");
        };
        if slot.kind != kind {
            bail!(
                "the step's draw {} is {kind:?}, its first step of this shape drew {:?}",
                self.next,
                slot.kind
            );
        }
        self.next += 1;
        Ok(slot)
    }
}

/// The reconstruction quarter of a draw `value` of the regularizer stream.
pub fn quarter_of(value: u64) -> usize {
    (value % 4) as usize
}

fn write(t: &Tensor, values: &[f32]) -> Result<()> {
    t.backend().write(&mut t.storage_mut(), values)
}
