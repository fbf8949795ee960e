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

mod phases;
mod subpixel;

use super::elementwise::{activate_in_place, activation_grad_into};
use super::gemm::{gemm, gemm_gathered, Gathered};
use super::{copy_short, par_output, ELEMENTWISE_CHUNK};
use crate::backend::{Activation, ConvGeom};
use rayon::prelude::*;
use std::cell::RefCell;
use std::thread::LocalKey;

use phases::Phases;
use subpixel::{backward_data_subpixel, is_subpixel};

/// Most floats of one chunk's column matrix (4 MiB): large enough for big GEMMs, small enough
/// to keep peak memory (and cache misses) down.
const COL_BUDGET: usize = 1 << 20;

thread_local! {
    /// Column matrix of the current chunk.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Channel-major output/gradient of the current chunk.
    static CHANNEL_MAJOR: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Split planes of the current chunk (see [`Phases`]).
    pub(super) static SPLIT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer `key`, `len` floats long (contents unspecified), kept for
/// the next call.
pub(super) fn with_buffer<R>(
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
pub(super) fn with_scratch<R>(
    len_a: usize,
    len_b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
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
pub(super) fn items_per_task(per_item: usize) -> usize {
    TASK_FLOATS.div_ceil(per_item.max(1))
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
