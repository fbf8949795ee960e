//! Fast convolution on the CPU: each layer is one or a few large GEMMs over the batch
//! (packing amortised, threads busy). The input is split into phase planes ([`Phases`]) where
//! every window row is a contiguous run; forward packs its column matrix straight from them
//! ([`gemm_gathered`], never written out), backward-filter gathers the transposed one the same
//! way where the layer is wide enough (else im2col and the a·bᵀ GEMM), backward-data is four
//! sub-pixel GEMMs read from the padded dy on the GAN models' stride-2 layers
//! ([`backward_data_subpixel`]), elsewhere one GEMM per chunk of images into a column matrix,
//! then col2im. Chunk sizes depend only on the geometry, never on the thread count, and the
//! GEMM splits its work over the output (never over the summed dimension), so results are
//! bit-identical whatever the number of threads. Scratch buffers are kept per thread and
//! reused from one call to the next. A fused conv + activation (`ops::conv2d_act`) has its
//! activation applied to each image as forward (or, for a transposed conv, backward-data's
//! last pass) writes it, and its derivative as backward-filter's
//! channel-major copy reads dy. The plain definition it is tested against lives in
//! `crate::backend::reference`.

use super::elementwise::{activate_in_place, activation_grad_into};
use super::gemm::{gemm, gemm_gathered, Gathered};
use super::{copy_short, par_output, ELEMENTWISE_CHUNK};
use crate::backend::{Activation, ConvGeom};
use rayon::prelude::*;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Most floats of one chunk's column matrix (4 MiB): large enough for big GEMMs, small enough
/// to keep peak memory (and cache misses) down.
const COL_BUDGET: usize = 1 << 20;

thread_local! {
    /// Column matrix of the current chunk.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Channel-major output/gradient of the current chunk.
    static CHANNEL_MAJOR: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Split planes of the current chunk (see [`Phases`]).
    static SPLIT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer `key`, `len` floats long (contents unspecified), kept for
/// the next call.
fn with_buffer<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered (a conv inside a rayon task stolen by this thread): a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Runs `f` with the column and channel-major buffers (see [`with_buffer`]).
fn with_scratch<R>(len_a: usize, len_b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    with_buffer(&COLUMNS, len_a, |a| {
        with_buffer(&CHANNEL_MAJOR, len_b, |b| f(a, b))
    })
}

/// Pixels per image of the output, rows of the column matrix, images per chunk.
fn sizes(g: &ConvGeom) -> (usize, usize, usize) {
    let l = g.oh * g.ow;
    let k = g.c_in * g.kh * g.kw;
    let per_image = (k * l).max(1);
    (l, k, (COL_BUDGET / per_image).clamp(1, g.n.max(1)))
}

/// Floats of work per rayon task in the copy loops below: fewer, larger tasks than one per row
/// (small layers spent more on scheduling than on copying). Each output element is written by
/// one task in a fixed order, so the split never changes a result.
const TASK_FLOATS: usize = 1 << 15;

/// Items of `per_item` floats each that make one task.
fn items_per_task(per_item: usize) -> usize {
    TASK_FLOATS.div_ceil(per_item.max(1))
}

/// An input plane zero-padded and split into `stride × stride` phases: phase `(py, px)` is the
/// `hq × wq` plane of padded pixels `(y·stride + py, x·stride + px)`. Output pixel `(oy, ox)`'s
/// tap `(ky, kx)` is then pixel `(oy + ky/stride, ox + kx/stride)` of phase
/// `(ky % stride, kx % stride)`, so each output row of a column row is a contiguous run of
/// one phase row: im2col and col2im become short copies and adds the compiler vectorises,
/// where strided gathers on the small planes of a GAN did not.
struct Phases {
    s: usize,
    pad: usize,
    h: usize,
    w: usize,
    hq: usize,
    wq: usize,
}

impl Phases {
    fn new(g: &ConvGeom) -> Self {
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

    fn plane_len(&self) -> usize {
        self.s * self.s * self.hq * self.wq
    }

    /// Where tap `(ky, kx)` of output pixel `(0, 0)` lies in a split plane; output pixel
    /// `(oy, ox)` reads `offset + oy·wq + ox`.
    fn tap_offset(&self, ky: usize, kx: usize) -> usize {
        let phase = (ky % self.s) * self.s + kx % self.s;
        (phase * self.hq + ky / self.s) * self.wq + kx / self.s
    }

    /// Where each column-matrix row (ci, ky, kx) starts in a batch's split planes.
    fn tap_starts(&self, g: &ConvGeom) -> Vec<usize> {
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
    fn pixel_starts(&self, images: usize, channels: usize, oh: usize, ow: usize) -> Vec<usize> {
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
    fn with_split<R>(&self, x: &[f32], planes: usize, f: impl FnOnce(&[f32]) -> R) -> R {
        if self.is_identity() {
            return f(x);
        }
        with_buffer(&SPLIT, planes * self.plane_len(), |xs| {
            self.split(x, xs);
            f(xs)
        })
    }

    /// A padded row's scratch: `stride·wq` floats, at least the padded width.
    fn row_scratch(&self) -> Vec<f32> {
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
    fn merge(&self, src: &[f32], dx: &mut [f32], tmp: &mut [f32]) {
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

/// `col[(ci, ky, kx), (b, oy, ox)]` for the `nb` images in `x`, read from split planes
/// ([`Phases`]): each output row is a contiguous copy.
fn im2col(x: &[f32], g: &ConvGeom, nb: usize, col: &mut [f32]) {
    let ph = Phases::new(g);
    let l = g.oh * g.ow;
    ph.with_split(x, nb * g.c_in, |xs| {
        col.par_chunks_mut(nb * l)
            .enumerate()
            .with_min_len(items_per_task(nb * l))
            .for_each(|(row, out)| {
                let kx = row % g.kw;
                let ky = (row / g.kw) % g.kh;
                let ci = row / (g.kw * g.kh);
                let tap = ph.tap_offset(ky, kx);
                for (b, out) in out.chunks_exact_mut(l).enumerate() {
                    let plane = &xs[(b * g.c_in + ci) * ph.plane_len() + tap..];
                    for (oy, out) in out.chunks_exact_mut(g.ow).enumerate() {
                        for (o, &v) in out.iter_mut().zip(&plane[oy * ph.wq..][..g.ow]) {
                            *o = v;
                        }
                    }
                }
            });
    });
}

/// Adjoint of `im2col`: `dx` (the chunk's `nb` images, overwritten) from the columns. One
/// channel plane per item, accumulated in a split plane ([`Phases`]) row by row (taps summed
/// in a fixed order: ky, kx), then merged into `dx` and passed through `act` if given.
fn col2im(col: &[f32], g: &ConvGeom, nb: usize, dx: &mut [f32], act: Option<Activation>) {
    let ph = Phases::new(g);
    let l = g.oh * g.ow;
    let plane = g.h * g.w;
    dx.par_chunks_mut(plane.max(1))
        .enumerate()
        .with_min_len(items_per_task(g.kh * g.kw * l))
        .for_each_init(
            || (vec![0.0; ph.plane_len()], ph.row_scratch()),
            |(acc, tmp), (p, xc)| {
                let (b, ci) = (p / g.c_in, p % g.c_in);
                acc.fill(0.0);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = (ci * g.kh + ky) * g.kw + kx;
                        let src = &col[row * nb * l + b * l..][..l];
                        let dst = &mut acc[ph.tap_offset(ky, kx)..];
                        for (oy, src) in src.chunks_exact(g.ow).enumerate() {
                            for (d, &v) in dst[oy * ph.wq..][..g.ow].iter_mut().zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
                ph.merge(acc, xc, tmp);
                if let Some(act) = act {
                    activate_in_place(act, xc);
                }
            },
        );
}

/// A gradient `dy` and, if given, the activation it goes back through first, with that
/// activation's output (laid out as dy): see [`activation_grad_into`].
#[derive(Clone, Copy)]
pub struct Grad<'a> {
    pub dy: &'a [f32],
    pub through: Option<(Activation, &'a [f32])>,
}

impl Grad<'_> {
    /// `dst` = elements `range` of the gradient (through the activation if any).
    fn read(&self, range: std::ops::Range<usize>, dst: &mut [f32]) {
        match self.through {
            None => copy_short(dst, &self.dy[range]),
            Some((act, y)) => activation_grad_into(act, &y[range.clone()], &self.dy[range], dst),
        }
    }

    /// The gradient written out: `dy` itself, or through the activation into a new vector.
    fn resolved(&self) -> std::borrow::Cow<'_, [f32]> {
        if self.through.is_none() {
            return self.dy.into();
        }
        let mut dz = vec![0.0; self.dy.len()];
        dz.par_chunks_mut(ELEMENTWISE_CHUNK)
            .enumerate()
            .for_each(|(i, out)| {
                let start = i * ELEMENTWISE_CHUNK;
                self.read(start..start + out.len(), out);
            });
        dz.into()
    }
}

/// `[nb, c, l]` (images, from image `first` of `src`) → `[c, nb·l]` (channel-major).
fn to_channel_major(src: Grad, first: usize, c: usize, l: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(nb * l)
        .enumerate()
        .with_min_len(items_per_task(nb * l))
        .for_each(|(ch, row)| {
            for b in 0..nb {
                let at = ((first + b) * c + ch) * l;
                src.read(at..at + l, &mut row[b * l..(b + 1) * l]);
            }
        });
}

/// `[c, nb·l]` → `[nb, c, l]`, each image then passed through `act` if given.
fn from_channel_major(
    src: &[f32],
    c: usize,
    l: usize,
    nb: usize,
    act: Option<Activation>,
) -> Vec<f32> {
    par_output(nb * c * l, c * l, items_per_task(c * l), |b, img| {
        for ch in 0..c {
            copy_short(
                &mut img[ch * l..(ch + 1) * l],
                &src[ch * nb * l + b * l..ch * nb * l + (b + 1) * l],
            );
        }
        if let Some(act) = act {
            activate_in_place(act, img);
        }
    })
}

/// `act` (if given) over all of `ys`: the epilogue of the dense paths.
fn activate(act: Option<Activation>, ys: &mut [f32]) {
    if let Some(act) = act {
        ys.par_chunks_mut(ELEMENTWISE_CHUNK)
            .for_each(|chunk| activate_in_place(act, chunk));
    }
}

/// Whether the kernel covers the whole unpadded input (one output pixel, as in the last layer
/// of D and, transposed, the first of G): the column matrix of an image is then the image
/// itself, so each direction is one GEMM on the tensors as they are, with no im2col, col2im
/// or channel-major copies (which cost more than the product on these 1-pixel outputs).
fn is_dense(g: &ConvGeom) -> bool {
    g.oh == 1 && g.ow == 1 && g.pad == 0 && g.kh == g.h && g.kw == g.w
}

/// The convolution, then `act` if given (fused: applied to each image as it is written).
pub fn forward(x: &[f32], w: &[f32], g: &ConvGeom, act: Option<Activation>) -> Vec<f32> {
    let (l, k) = (g.oh * g.ow, g.c_in * g.kh * g.kw);
    if is_dense(g) || g.n == 0 {
        // y[n, c_out] = x[n, k]·w[c_out, k]ᵀ
        let mut y = vec![0.0; g.output_len()];
        gemm(g.n, k, g.c_out, x, false, w, true, 0.0, &mut y);
        activate(act, &mut y);
        return y;
    }
    // One GEMM over the whole batch, its column matrix read from the split planes where the
    // GEMM packs it (never written out): row (ci, ky, kx) starts at channel ci's tap, column
    // (b, oy, ox) at image b's pixel (oy, ox) of a split plane.
    let ph = Phases::new(g);
    let (row_start, col_start) = (ph.tap_starts(g), ph.pixel_starts(g.n, g.c_in, g.oh, g.ow));
    with_buffer(&CHANNEL_MAJOR, g.c_out * g.n * l, |yc| {
        ph.with_split(x, g.n * g.c_in, |planes| {
            let cols = Gathered {
                data: planes,
                row_start: &row_start,
                col_start: &col_start,
            };
            gemm_gathered(g.c_out, k, g.n * l, w, false, &cols, yc);
        });
        from_channel_major(yc, g.c_out, l, g.n, act)
    })
}

/// The input gradient (a transposed conv's output), then `act` if given (fused: applied to
/// each channel plane as col2im writes it).
pub fn backward_data(dy: &[f32], w: &[f32], g: &ConvGeom, act: Option<Activation>) -> Vec<f32> {
    let (l, k, chunk) = sizes(g);
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * l);
    if g.n > 0 && is_subpixel(g) {
        return backward_data_subpixel(dy, w, g, act);
    }
    let mut dx = vec![0.0; g.input_len()];
    if g.n == 0 {
        return dx;
    }
    if is_dense(g) {
        // dx[n, k] = dy[n, c_out]·w[c_out, k]
        gemm(g.n, g.c_out, k, dy, false, w, false, 0.0, &mut dx);
        activate(act, &mut dx);
        return dx;
    }
    // col = wᵀ·dy over each chunk, dy read as [c_out, (b, pixel)] where the GEMM packs it.
    let channel_start: Vec<usize> = (0..g.c_out).map(|co| co * l).collect();
    let pixel_start: Vec<usize> = (0..chunk * l).map(|j| (j / l) * out_len + j % l).collect();
    with_buffer(&COLUMNS, k * chunk * l, |col| {
        for start in (0..g.n).step_by(chunk) {
            let nb = chunk.min(g.n - start);
            let col = &mut col[..k * nb * l];
            let dy_cols = Gathered {
                data: &dy[start * out_len..(start + nb) * out_len],
                row_start: &channel_start,
                col_start: &pixel_start[..nb * l],
            };
            gemm_gathered(k, g.c_out, nb * l, w, true, &dy_cols, col);
            let dx = &mut dx[start * in_len..(start + nb) * in_len];
            col2im(col, g, nb, dx, act);
        }
    });
    dx
}

/// Whether backward-data runs as four sub-pixel GEMMs ([`backward_data_subpixel`]): the
/// stride-2, 4 × 4, pad-1 layers of the GAN models, whose input is twice the output's size,
/// where c_out is at most 128. col2im's share of the column path shrinks as c_out (the
/// column GEMM's depth) grows: measured on dcgan 32 and 64 px layers (benches/cpu_conv),
/// sub-pixel was 1.2-1.4x faster at c_out 64 and 128, on par at 256, 15% slower at 512.
fn is_subpixel(g: &ConvGeom) -> bool {
    let (k4, s2) = (g.kh == 4 && g.kw == 4, g.stride == 2 && g.pad == 1);
    let channels = g.c_in >= 8 && g.c_out <= 128;
    k4 && s2 && g.h == 2 * g.oh && g.w == 2 * g.ow && channels
}

/// Backward-data of a stride-2, 4 × 4, pad-1 convolution with no column matrix and no
/// col2im: input pixel `(2qy + ry, 2qx + rx)` meets exactly the taps `ky = 3 - ry - 2ty`,
/// `kx = 3 - rx - 2tx` (`ty, tx` in 0..2) of output pixels `(qy + ry + ty - 1, qx + rx +
/// tx - 1)`. So each phase `(ry, rx)` of dx is one GEMM, `dx_phase[ci, (b, qy, qx)] =
/// Σ_(co, ty, tx) w[co, ci, ky, kx] · dy_padded[b, co, qy + ry + ty, qx + rx + tx]`, its B read
/// from the zero-padded dy planes where the GEMM packs it (rows of `ow` pixels are contiguous
/// runs, as in `forward`), k = 4·c_out. The phases are then interleaved into dx (through
/// `act` if given). Same sums as the column path, in another order.
fn backward_data_subpixel(
    dy: &[f32],
    w: &[f32],
    g: &ConvGeom,
    act: Option<Activation>,
) -> Vec<f32> {
    let (taps, pixels) = (4 * g.c_out, g.n * g.oh * g.ow);
    // dy zero-padded by one pixel on every side.
    let padded = Phases {
        s: 1,
        pad: 1,
        h: g.oh,
        w: g.ow,
        hq: g.oh + 2,
        wq: g.ow + 2,
    };
    let plane = padded.plane_len();
    let col_start = padded.pixel_starts(g.n, g.c_out, g.oh, g.ow);
    with_scratch(4 * taps * g.c_in, 4 * g.c_in * pixels, |weights, phases| {
        subpixel_weights(w, g, weights);
        padded.with_split(dy, g.n * g.c_out, |dyp| {
            let gemms = weights
                .chunks_exact(taps * g.c_in)
                .zip(phases.chunks_exact_mut(g.c_in * pixels));
            for (phase, (a, out)) in gemms.enumerate() {
                let (ry, rx) = (phase / 2, phase % 2);
                // Row (ty, tx, co) of B: channel co's padded plane shifted by (ry + ty, rx + tx).
                let row_start: Vec<usize> = (0..taps)
                    .map(|t| {
                        let (ty, tx, co) = (t / (2 * g.c_out), (t / g.c_out) % 2, t % g.c_out);
                        co * plane + (ry + ty) * padded.wq + rx + tx
                    })
                    .collect();
                let b = Gathered {
                    data: dyp,
                    row_start: &row_start,
                    col_start: &col_start,
                };
                gemm_gathered(g.c_in, taps, pixels, a, true, &b, out);
            }
        });
        interleave_phases(phases, g, act)
    })
}

/// The A operands of [`backward_data_subpixel`], each stored transposed: phase `(ry, rx)`'s
/// `[(ty, tx, co), ci]` = `w[co, ci, 3 - ry - 2ty, 3 - rx - 2tx]`, phases one after another.
/// Read in w's order, a range of output channels per task (w can be megabytes: reading it
/// tap by tap missed the cache on every load).
fn subpixel_weights(w: &[f32], g: &ConvGeom, out: &mut [f32]) {
    // Where tap (ky, kx) goes: block (phase, ty, tx) of c_out × c_in floats.
    let block_of = |tap: usize| {
        let (ky, kx) = (tap / 4, tap % 4);
        let (ry, ty, rx, tx) = ((3 - ky) % 2, (3 - ky) / 2, (3 - kx) % 2, (3 - kx) / 2);
        (ry * 2 + rx) * 4 + ty * 2 + tx
    };
    let block_len = g.c_out * g.c_in;
    let chunk = items_per_task(16 * g.c_in);
    // tasks[j][block]: block's rows for output channels j·chunk ..
    let mut tasks: Vec<Vec<&mut [f32]>> = Vec::new();
    tasks.resize_with(g.c_out.div_ceil(chunk), || Vec::with_capacity(16));
    for block in out.chunks_exact_mut(block_len) {
        for (task, rows) in tasks.iter_mut().zip(block.chunks_mut(chunk * g.c_in)) {
            task.push(rows);
        }
    }
    let blocks: [usize; 16] = std::array::from_fn(block_of);
    tasks
        .into_par_iter()
        .zip(w.par_chunks(chunk * g.c_in * 16))
        .for_each(|(mut rows, w)| {
            // Eight (co, ci) at a time, their 16 taps transposed through a small tile: one
            // 8-float store per block instead of a bounds-checked store per float (3-4x
            // faster).
            let mut eights = w.chunks_exact(8 * 16);
            for (e, taps) in (&mut eights).enumerate() {
                let mut tile = [[0.0f32; 8]; 16];
                for (i, tapset) in taps.chunks_exact(16).enumerate() {
                    for (row, &v) in tile.iter_mut().zip(tapset) {
                        row[i] = v;
                    }
                }
                for (row, &block) in tile.iter().zip(&blocks) {
                    rows[block][8 * e..8 * e + 8].copy_from_slice(row);
                }
            }
            let done = (w.len() - eights.remainder().len()) / 16;
            for (i, tapset) in eights.remainder().chunks_exact(16).enumerate() {
                for (&v, &block) in tapset.iter().zip(&blocks) {
                    rows[block][done + i] = v;
                }
            }
        });
}

/// dx `[n, c_in, h, w]` from its four phases (`[4][c_in, (b, qy, qx)]`, phase `2ry + rx`
/// holding pixels `(2qy + ry, 2qx + rx)`), each plane then passed through `act` if given.
fn interleave_phases(phases: &[f32], g: &ConvGeom, act: Option<Activation>) -> Vec<f32> {
    let (l, pixels) = (g.oh * g.ow, g.n * g.oh * g.ow);
    let phase_len = g.c_in * pixels;
    // The GAN models' widths as constants: their short rows unrolled whole.
    let interleave = match g.ow {
        4 => interleave_plane::<4>,
        8 => interleave_plane::<8>,
        16 => interleave_plane::<16>,
        32 => interleave_plane::<32>,
        _ => interleave_plane::<0>,
    };
    let plane_len = g.h * g.w;
    par_output(
        g.input_len(),
        plane_len,
        items_per_task(plane_len),
        |p, plane| {
            let (b, ci) = (p / g.c_in, p % g.c_in);
            let at = ci * pixels + b * l;
            interleave(&phases[at..], phase_len, g.ow, plane);
            if let Some(act) = act {
                activate_in_place(act, plane);
            }
        },
    )
}

/// One plane of [`interleave_phases`], rows `2·ow` long: row `2qy + ry` interleaves row `qy`
/// of phases `(ry, 0)` and `(ry, 1)`, which start `2ry` and `2ry + 1` phases into `phases`
/// (`phase_len` floats each). `OW` is `ow` where not 0, so that the compiler unrolls the
/// short rows whole.
fn interleave_plane<const OW: usize>(
    phases: &[f32],
    phase_len: usize,
    ow: usize,
    plane: &mut [f32],
) {
    let ow = if OW == 0 { ow } else { OW };
    for (y, row) in plane.chunks_exact_mut(2 * ow).enumerate() {
        let start = 2 * (y % 2) * phase_len + (y / 2) * ow;
        let (r0, r1) = (&phases[start..][..ow], &phases[start + phase_len..][..ow]);
        for ((a, b), pair) in r0.iter().zip(r1).zip(row.chunks_exact_mut(2)) {
            pair[0] = *a;
            pair[1] = *b;
        }
    }
}

/// Whether backward-filter gathers colᵀ into the packed GEMM ([`backward_filter`]): the
/// gather costs about one scattered load per element, which pays where each element meets
/// many output channels and the taps fill whole panels; below that (the RGB layers, K = 48)
/// the written-out column matrix and the a·bᵀ path were 2-3x faster (examples probe at dcgan
/// 32 and 64 px).
fn gathers_filter_columns(g: &ConvGeom) -> bool {
    g.c_out >= 64 && g.c_in * g.kh * g.kw >= 256
}

/// The weight gradient from `dy`, through an activation first if `dy` says so (applied as
/// the channel-major copy reads it).
pub fn backward_filter(x: &[f32], dy: Grad, g: &ConvGeom) -> Vec<f32> {
    let (l, k, chunk) = sizes(g);
    let in_len = g.c_in * g.h * g.w;
    let mut dw = vec![0.0; g.weight_len()];
    if is_dense(g) {
        // dw[c_out, k] = dy[n, c_out]ᵀ·x[n, k]
        gemm(
            g.c_out,
            g.n,
            k,
            &dy.resolved(),
            true,
            x,
            false,
            0.0,
            &mut dw,
        );
        return dw;
    }
    if gathers_filter_columns(g) {
        // dw[c_out, k] = dy[c_out, (b, pixel)]·colᵀ, one GEMM over the whole batch whose colᵀ
        // (pixels × taps) is gathered from the split planes where the GEMM packs it (the
        // starts of `forward`, roles swapped).
        let ph = Phases::new(g);
        let (tap_start, pixel_start) = (ph.tap_starts(g), ph.pixel_starts(g.n, g.c_in, g.oh, g.ow));
        with_buffer(&CHANNEL_MAJOR, g.c_out * g.n * l, |dyc| {
            to_channel_major(dy, 0, g.c_out, l, g.n, dyc);
            ph.with_split(x, g.n * g.c_in, |planes| {
                let cols_t = Gathered {
                    data: planes,
                    row_start: &pixel_start,
                    col_start: &tap_start,
                };
                gemm_gathered(g.c_out, g.n * l, k, dyc, false, &cols_t, &mut dw);
            });
        });
        return dw;
    }
    with_scratch(k * chunk * l, g.c_out * chunk * l, |col, dyc| {
        for start in (0..g.n).step_by(chunk) {
            let nb = chunk.min(g.n - start);
            let (col, dyc) = (&mut col[..k * nb * l], &mut dyc[..g.c_out * nb * l]);
            im2col(&x[start * in_len..(start + nb) * in_len], g, nb, col);
            to_channel_major(dy, start, g.c_out, l, nb, dyc);
            let beta = if start == 0 { 0.0 } else { 1.0 };
            gemm(g.c_out, nb * l, k, dyc, false, col, true, beta, &mut dw);
        }
    });
    dw
}
