//! Backward-data of the GAN models' stride-2, 4 × 4, pad-1 layers as four sub-pixel GEMMs
//! read from the padded dy, with no column matrix and no col2im.

use super::phases::Phases;
use super::{items_per_task, with_scratch};
use crate::backend::cpu::elementwise::activate_in_place;
use crate::backend::cpu::gemm::{gemm_gathered, Gathered};
use crate::backend::cpu::par_output;
use crate::backend::{Activation, ConvGeom};
use rayon::prelude::*;

/// Whether backward-data runs as four sub-pixel GEMMs ([`backward_data_subpixel`]): the
/// stride-2, 4 × 4, pad-1 layers of the GAN models, whose input is twice the output's size,
/// where c_out is at most 128. col2im's share of the column path shrinks as c_out (the
/// column GEMM's depth) grows: measured on dcgan 32 and 64 px layers (benches/cpu_conv),
/// sub-pixel was 1.2-1.4x faster at c_out 64 and 128, on par at 256, 15% slower at 512.
pub(super) fn is_subpixel(g: &ConvGeom) -> bool {
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
pub(super) fn backward_data_subpixel(
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
