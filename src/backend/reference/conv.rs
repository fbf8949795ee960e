//! Convolution as the definition reads: direct loops over every output, input and kernel tap,
//! accumulated in f64. Images (and filter rows) are split over rayon in a fixed way, so the
//! result does not depend on the thread count.
//!
//! Mixed precision rounds the operands (and, where asked, the output) around these
//! primitives: `crate::backend::conv` holds those rounding points and says where they fall.

use crate::backend::ConvGeom;
use rayon::prelude::*;

/// Input position `(iy, ix)` read by output `(oy, ox)` at tap `(ky, kx)`, if inside the image.
fn tap(g: &ConvGeom, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let iy = (oy * g.stride + ky).checked_sub(g.pad)?;
    let ix = (ox * g.stride + kx).checked_sub(g.pad)?;
    (iy < g.h && ix < g.w).then_some((iy, ix))
}

/// `y[n, co, oy, ox] = Σ_{ci, ky, kx} x[n, ci, iy, ix] · w[co, ci, ky, kx]`.
pub fn forward(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let mut y = vec![0.0; g.output_len()];
    y.par_chunks_mut(out_len.max(1))
        .zip(x.par_chunks(in_len.max(1)))
        .for_each(|(yn, xn)| {
            for co in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0f64;
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    if let Some((iy, ix)) = tap(g, oy, ox, ky, kx) {
                                        acc += f64::from(xn[(ci * g.h + iy) * g.w + ix])
                                            * f64::from(
                                                w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx],
                                            );
                                    }
                                }
                            }
                        }
                        yn[(co * g.oh + oy) * g.ow + ox] = acc as f32;
                    }
                }
            }
        });
    y
}

/// `dx[n, ci, iy, ix] = Σ dy[n, co, oy, ox] · w[co, ci, ky, kx]` over the outputs that read it.
pub fn backward_data(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let mut dx = vec![0.0; g.input_len()];
    dx.par_chunks_mut(in_len.max(1))
        .zip(dy.par_chunks(out_len.max(1)))
        .for_each(|(dxn, dyn_)| {
            let mut acc = vec![0f64; in_len];
            for co in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let d = f64::from(dyn_[(co * g.oh + oy) * g.ow + ox]);
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    if let Some((iy, ix)) = tap(g, oy, ox, ky, kx) {
                                        acc[(ci * g.h + iy) * g.w + ix] += d * f64::from(
                                            w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx],
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (o, a) in dxn.iter_mut().zip(acc) {
                *o = a as f32;
            }
        });
    dx
}

/// `dw[co, ci, ky, kx] = Σ_{n, oy, ox} dy[n, co, oy, ox] · x[n, ci, iy, ix]`.
pub fn backward_filter(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (in_len, out_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let per_co = g.c_in * g.kh * g.kw;
    let mut dw = vec![0.0; g.weight_len()];
    dw.par_chunks_mut(per_co.max(1))
        .enumerate()
        .for_each(|(co, dwc)| {
            for ci in 0..g.c_in {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let mut acc = 0f64;
                        for n in 0..g.n {
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    if let Some((iy, ix)) = tap(g, oy, ox, ky, kx) {
                                        acc += f64::from(
                                            dy[n * out_len + (co * g.oh + oy) * g.ow + ox],
                                        ) * f64::from(
                                            x[n * in_len + (ci * g.h + iy) * g.w + ix],
                                        );
                                    }
                                }
                            }
                        }
                        dwc[(ci * g.kh + ky) * g.kw + kx] = acc as f32;
                    }
                }
            }
        });
    dw
}
