//! The CPU backend's convolutions, layer by layer, at the shapes of a DCGAN training step: each
//! layer's forward, backward-data and backward-filter, timed alone (median of `--reps` calls)
//! with GFLOP/s (2 flops per multiply-add of the convolution as defined; the dense last layer
//! of D does almost none). D's layers are convolutions; G's transposed convolutions are listed
//! as the convolution they are the backward-data of, so G's forward is that row's
//! backward-data and its input gradient that row's forward.
//!
//! ```sh
//! cargo bench --bench cpu_conv                                        # dcgan 32 px, w32, b64
//! cargo bench --bench cpu_conv -- --image-size 64 --width 64 --batch-size 16
//! cargo bench --bench cpu_conv -- --layer "D 32->64" --reps 200     # one layer, to profile
//! ```
//!
//! For before/after figures run two builds of this bench one after the other, several times
//! (interleaved): single runs on a shared machine swing by 20% or more.

use artgan::backend::{backend, Backend, ConvGeom, Device};
use artgan::rng::Rng;
use clap::Parser;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// ngf = ndf.
    #[arg(long, default_value_t = 32)]
    width: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 100)]
    nz: usize,
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Only the layers whose name contains this (e.g. "D 32->64"), to profile one alone.
    #[arg(long)]
    layer: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The step's convolutions as (name, geometry): D down to 4x4 then the dense 4x4 → 1, G from
/// the latent (dense) up to the image.
fn layers(a: &Args) -> anyhow::Result<Vec<(String, ConvGeom)>> {
    let n = a.batch_size;
    // Channels per resolution, image first: 3, w, 2w, ... down to 4x4.
    let mut chans = vec![3];
    let (mut side, mut c) = (a.image_size / 2, a.width);
    while side >= 4 {
        chans.push(c);
        c *= 2;
        side /= 2;
    }
    let top = *chans.last().expect("image at least 8 px");
    let mut out = Vec::new();
    let mut side = a.image_size;
    for pair in chans.windows(2) {
        let g = ConvGeom::conv(n, pair[0], side, side, pair[1], 4, 2, 1)?;
        out.push((format!("D {}->{} {side}px", pair[0], pair[1]), g));
        side /= 2;
    }
    out.push((
        format!("D {top}->1 dense"),
        ConvGeom::conv(n, top, 4, 4, 1, 4, 1, 0)?,
    ));
    out.push((
        format!("G {}->{top} dense", a.nz),
        ConvGeom::transposed(n, a.nz, 1, 1, top, 4, 1, 0, 0)?,
    ));
    let mut side = 4;
    for pair in chans.windows(2).rev() {
        let g = ConvGeom::transposed(n, pair[1], side, side, pair[0], 4, 2, 1, 0)?;
        out.push((format!("G {}->{} {}px", pair[1], pair[0], side * 2), g));
        side *= 2;
    }
    Ok(out)
}

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let be = backend(Device::Cpu)?;
    let mut rng = Rng::new(3);
    let mut up = |len: usize, be: &dyn Backend| be.upload(&rng.uniform_vec(len, -0.5, 0.5));
    println!(
        "cpu_conv: dcgan {}px, width {}, batch {}, {} rayon threads, median of {} calls",
        a.image_size,
        a.width,
        a.batch_size,
        rayon::current_num_threads(),
        a.reps
    );
    let mut totals = [0.0; 3];
    let wanted = |name: &str| {
        a.layer
            .as_ref()
            .is_none_or(|part| name.contains(part.as_str()))
    };
    for (name, g) in layers(&a)?.into_iter().filter(|(name, _)| wanted(name)) {
        let (x, w, dy) = (
            up(g.input_len(), &*be)?,
            up(g.weight_len(), &*be)?,
            up(g.output_len(), &*be)?,
        );
        let flop = 2.0 * (g.n * g.c_out * g.oh * g.ow * g.c_in * g.kh * g.kw) as f64;
        let times = [
            median_secs(a.reps, || drop(be.conv2d_forward(&x, &w, &g).unwrap())),
            median_secs(a.reps, || {
                drop(be.conv2d_backward_data(&dy, &w, &g).unwrap())
            }),
            median_secs(a.reps, || {
                drop(be.conv2d_backward_filter(&x, &dy, &g).unwrap())
            }),
        ];
        let mut line = format!("{name:22}");
        for ((label, t), total) in ["fwd", "bwd-data", "bwd-filter"]
            .iter()
            .zip(times)
            .zip(&mut totals)
        {
            *total += t;
            line += &format!(
                "  {label} {:7.3} ms {:5.0} GFLOP/s",
                t * 1e3,
                flop / t / 1e9
            );
        }
        println!("{line}");
    }
    println!(
        "total: fwd {:.2} ms, bwd-data {:.2} ms, bwd-filter {:.2} ms",
        totals[0] * 1e3,
        totals[1] * 1e3,
        totals[2] * 1e3
    );
    Ok(())
}
