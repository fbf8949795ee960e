//! Split input planes: a zero-padded plane cut into `stride × stride` phases so that every
//! window row of a convolution is a contiguous run (see [`Phases`]).

use super::{items_per_task, with_buffer, SPLIT};
use crate::backend::cpu::copy_short;
use crate::backend::ConvGeom;
use rayon::prelude::*;

/// An input plane zero-padded and split into `stride × stride` phases: phase `(py, px)` is the
/// `hq × wq` plane of padded pixels `(y·stride + py, x·stride + px)`. Output pixel `(oy, ox)`'s
/// tap `(ky, kx)` is then pixel `(oy + ky/stride, ox + kx/stride)` of phase
/// `(ky % stride, kx % stride)`, so each output row of a column row is a contiguous run of
/// one phase row: im2col and col2im become short copies and adds the compiler vectorises,
/// where strided gathers on the small planes of a GAN did not.
pub(super) struct Phases {
    pub(super) s: usize,
    pub(super) pad: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) hq: usize,
    pub(super) wq: usize,
}

impl Phases {
    pub(super) fn new(g: &ConvGeom) -> Self {
        let s = g.stride.max(1);
        Phases {
            s,
            pad: g.pad,
            h: g.h,
            w: g.w,
            hq: (g.h + 2 * g.pad).div_ceil(s),
            wq: (g.w + 2 * g.pad).div_ceil(s),
        }
    }

    /// Whether a split plane is the input plane itself (no padding, stride 1).
    fn is_identity(&self) -> bool {
        self.s == 1 && self.pad == 0
    }

    pub(super) fn plane_len(&self) -> usize {
        self.s * self.s * self.hq * self.wq
    }

    /// Where tap `(ky, kx)` of output pixel `(0, 0)` lies in a split plane; output pixel
    /// `(oy, ox)` reads `offset + oy·wq + ox`.
    pub(super) fn tap_offset(&self, ky: usize, kx: usize) -> usize {
        let phase = (ky % self.s) * self.s + kx % self.s;
        (phase * self.hq + ky / self.s) * self.wq + kx / self.s
    }

    /// Where each column-matrix row (ci, ky, kx) starts in a batch's split planes.
    pub(super) fn tap_starts(&self, g: &ConvGeom) -> Vec<usize> {
        let k = g.c_in * g.kh * g.kw;
        (0..k)
            .map(|row| {
                let (ci, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
                ci * self.plane_len() + self.tap_offset(ky, kx)
            })
            .collect()
    }

    /// Where each column-matrix column (b, oy, ox) starts, relative to its row's start, for
    /// `images` of `channels` split planes each and an `oh × ow` output.
    pub(super) fn pixel_starts(
        &self,
        images: usize,
        channels: usize,
        oh: usize,
        ow: usize,
    ) -> Vec<usize> {
        let mut starts = Vec::with_capacity(images * oh * ow);
        for b in 0..images {
            for oy in 0..oh {
                let row = b * channels * self.plane_len() + oy * self.wq;
                starts.extend(row..row + ow);
            }
        }
        starts
    }

    /// Runs `f` on the `planes` input planes of `x` as split planes: `x` itself where they are
    /// the same (stride 1, no padding), else this thread's split buffer.
    pub(super) fn with_split<R>(&self, x: &[f32], planes: usize, f: impl FnOnce(&[f32]) -> R) -> R {
        if self.is_identity() {
            return f(x);
        }
        with_buffer(&SPLIT, planes * self.plane_len(), |xs| {
            self.split(x, xs);
            f(xs)
        })
    }

    /// A padded row's scratch: `stride·wq` floats, at least the padded width.
    pub(super) fn row_scratch(&self) -> Vec<f32> {
        vec![0.0; self.s * self.wq]
    }

    /// The phase rows `(py, 0..stride)` at phase row `yq` of a split plane.
    fn phase_rows(&self, py: usize, yq: usize) -> PhaseRows {
        PhaseRows {
            start: (py * self.s * self.hq + yq) * self.wq,
            gap: self.hq * self.wq,
            len: self.wq,
            s: self.s,
        }
    }

    /// `planes` input planes (`h × w` each) into split planes.
    fn split(&self, x: &[f32], out: &mut [f32]) {
        out.par_chunks_mut(self.plane_len())
            .zip(x.par_chunks(self.h * self.w))
            .with_min_len(items_per_task(self.plane_len()))
            .for_each_init(
                || self.row_scratch(),
                |tmp, (o, x)| match (self.s, self.pad) {
                    (1 | 2, 1) => self.split_padded_by_one(x, o),
                    _ => self.split_through_scratch(x, o, tmp),
                },
            );
    }

    /// One plane, each padded row built in a scratch row (zeros around the input row) and
    /// dealt out to its phases.
    fn split_through_scratch(&self, x: &[f32], o: &mut [f32], tmp: &mut [f32]) {
        for py in 0..self.s {
            for yq in 0..self.hq {
                let rows = self.phase_rows(py, yq);
                let y = (yq * self.s + py).wrapping_sub(self.pad);
                if y >= self.h {
                    rows.fill(o, 0.0);
                    continue;
                }
                // Only this span of the scratch is ever written: the rest stays 0.
                copy_short(
                    &mut tmp[self.pad..self.pad + self.w],
                    &x[y * self.w..][..self.w],
                );
                rows.deal(tmp, o);
            }
        }
    }

    /// One plane at stride 1 or 2 with one pixel of padding (every padded layer of the GAN
    /// models): each input row goes straight to its phase rows and the padding floats are
    /// written alone, with no scratch row (on these short rows the per-row work was most of
    /// the split's time).
    fn split_padded_by_one(&self, x: &[f32], o: &mut [f32]) {
        let (h, w, wq) = (self.h, self.w, self.wq);
        // The GAN models' widths as constants: their short rows unrolled whole.
        let split = match (self.s, w) {
            (1, 4) => split_padded_by_one::<1, 4>,
            (1, 8) => split_padded_by_one::<1, 8>,
            (1, 16) => split_padded_by_one::<1, 16>,
            (1, 32) => split_padded_by_one::<1, 32>,
            (1, _) => split_padded_by_one::<1, 0>,
            (_, 4) => split_padded_by_one::<2, 4>,
            (_, 8) => split_padded_by_one::<2, 8>,
            (_, 16) => split_padded_by_one::<2, 16>,
            (_, 32) => split_padded_by_one::<2, 32>,
            _ => split_padded_by_one::<2, 0>,
        };
        split(x, h, w, wq, o);
    }

    /// The inverse of [`Phases::split`] on the unpadded pixels: one split plane into `dx`
    /// (`tmp` from [`Phases::row_scratch`]).
    pub(super) fn merge(&self, src: &[f32], dx: &mut [f32], tmp: &mut [f32]) {
        for (y, row) in dx.chunks_exact_mut(self.w).enumerate() {
            let pr = y + self.pad;
            self.phase_rows(pr % self.s, pr / self.s).collect(src, tmp);
            copy_short(row, &tmp[self.pad..self.pad + self.w]);
        }
    }
}

/// `s` rows of `len` floats, `gap` apart, from `start` in a split plane: the phases
/// `(py, 0..s)` of one phase row.
struct PhaseRows {
    start: usize,
    gap: usize,
    len: usize,
    s: usize,
}

impl PhaseRows {
    fn fill(&self, plane: &mut [f32], v: f32) {
        for p in 0..self.s {
            plane[self.start + p * self.gap..][..self.len].fill(v);
        }
    }

    /// `row p [i] = src[i·s + p]`: a padded row dealt out to its phases (stride 2, every
    /// strided layer of the GAN models, as one loop over pairs that the compiler vectorises).
    fn deal(&self, src: &[f32], plane: &mut [f32]) {
        let (start, gap, len, s) = (self.start, self.gap, self.len, self.s);
        match s {
            1 => copy_short(&mut plane[start..][..len], &src[..len]),
            2 => {
                let (r0, r1) = plane[start..].split_at_mut(gap);
                let pairs = src.chunks_exact(2);
                for ((a, b), pair) in r0[..len].iter_mut().zip(&mut r1[..len]).zip(pairs) {
                    *a = pair[0];
                    *b = pair[1];
                }
            }
            _ => {
                for p in 0..s {
                    let row = &mut plane[start + p * gap..][..len];
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = src[i * s + p];
                    }
                }
            }
        }
    }

    /// The inverse of [`PhaseRows::deal`]: `out[i·s + p] = row p [i]`.
    fn collect(&self, plane: &[f32], out: &mut [f32]) {
        let (start, gap, len, s) = (self.start, self.gap, self.len, self.s);
        match s {
            1 => copy_short(&mut out[..len], &plane[start..][..len]),
            2 => {
                let (r0, r1) = (&plane[start..][..len], &plane[start + gap..][..len]);
                for ((a, b), pair) in r0.iter().zip(r1).zip(out.chunks_exact_mut(2)) {
                    pair[0] = *a;
                    pair[1] = *b;
                }
            }
            _ => {
                for p in 0..s {
                    let row = &plane[start + p * gap..][..len];
                    for (i, &v) in row.iter().enumerate() {
                        out[i * s + p] = v;
                    }
                }
            }
        }
    }
}

/// [`Phases::split`] of one `h × w` plane `x` at stride `S` (1 or 2) with one pixel of
/// padding, into `o` (`S × S` phases of rows `wq` long); `W` is `w` where not 0, so that the
/// compiler unrolls the short rows whole. Phases (py, 0..S) lie side by side and their row yq
/// is padded row S·yq + py. At stride 2 padded float `i + 1` of a row is `x[i]`: the even
/// floats of an input row go to phase 1 from its first float and the odd ones to phase 0
/// from its second. Every other float is a zero.
fn split_padded_by_one<const S: usize, const W: usize>(
    x: &[f32],
    h: usize,
    w: usize,
    wq: usize,
    o: &mut [f32],
) {
    let (w, wq) = if W == 0 {
        (w, wq)
    } else {
        (W, (W + 2).div_ceil(S))
    };
    let half = w / 2;
    for (py, phases) in o.chunks_exact_mut(o.len() / S).enumerate() {
        let (p0, p1) = phases.split_at_mut(phases.len() / S);
        let mut p1_rows = p1.chunks_exact_mut(wq);
        for (yq, r0) in p0.chunks_exact_mut(wq).enumerate() {
            let r0 = &mut r0[..wq];
            let y = (S * yq + py).wrapping_sub(1);
            if S == 1 {
                if y >= h {
                    r0.iter_mut().for_each(|v| *v = 0.0);
                } else {
                    r0[0] = 0.0;
                    r0[1..=w].copy_from_slice(&x[y * w..][..w]);
                    r0[w + 1] = 0.0;
                }
                continue;
            }
            let r1 = &mut p1_rows.next().expect("as many rows as phase 0")[..wq];
            if y >= h {
                r0.iter_mut().chain(r1.iter_mut()).for_each(|v| *v = 0.0);
                continue;
            }
            let row = &x[y * w..][..w];
            let pairs = row.chunks_exact(2);
            r0[0] = 0.0;
            if let [last] = pairs.remainder() {
                r1[half] = *last;
                r1[half + 1] = 0.0;
                r0[half + 1] = 0.0;
            } else {
                r1[half] = 0.0;
            }
            for ((even, odd), pair) in r1[..half].iter_mut().zip(&mut r0[1..=half]).zip(pairs) {
                *even = pair[0];
                *odd = pair[1];
            }
        }
    }
}
