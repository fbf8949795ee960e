//! The CPU backend's packed GEMM (`gemm_with` the detected kernel: what `gemm` runs except for
//! a plain and b transposed, which it leaves to the crate) against the `gemm` crate (the
//! backend's previous GEMM) on the shapes of
//! benches/results/gemm-pick-2026-12-01.txt (the batched convolution GEMMs of dcgan 32 px,
//! width 32, batch 64), plus those shapes with the transposes the convolutions use
//! (backward-data reads A transposed, backward-filter B). Interleaved: per round one timed
//! batch of each side, 7 rounds, medians; the ratio is the median of the per-round ratios.
//! For a·bᵀ, `gemm` itself (the dot-product path it takes there) is timed too.
//!
//! ```sh
//! cargo bench --bench gemm                 # on the default rayon pool (all cores)
//! ```

use artgan::backend::cpu::{crate_gemm, gemm, gemm_with, Kernel};
use artgan::rng::Rng;
use std::time::Instant;

const ROUNDS: usize = 7;
/// Multiply-adds per timed batch (about 20-100 ms on two cores).
const BATCH_WORK: usize = 1 << 31;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // (m, k, n, a_t, b_t): the pick's shapes as stored there (no transposes), then the
    // backward-data and backward-filter shapes with the conv's transposes.
    let shapes = [
        (32, 48, 16384, false, false),
        (64, 512, 4096, false, false),
        (128, 1024, 1024, false, false),
        (512, 64, 1024, false, false),
        (128, 256, 4096, false, false),
        (2048, 100, 64, false, false),
        (1024, 64, 1024, false, false),
        (64, 16384, 256, false, false),
        (512, 64, 1024, true, false),
        (1024, 128, 256, true, false),
        (64, 16384, 256, false, true),
        (32, 65536, 48, false, true),
        (128, 4096, 1024, false, true),
    ];
    let kernel = Kernel::detect();
    println!(
        "gemm: artgan's packed GEMM ({kernel:?} kernel) vs gemm crate 0.18, {} rayon threads, \
         load average {}",
        rayon::current_num_threads(),
        load_average()
    );
    let mut rng = Rng::new(1);
    let mut ratios = Vec::new();
    for (m, k, n, a_t, b_t) in shapes {
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b = rng.uniform_vec(k * n, -1.0, 1.0);
        let (mut c_ours, mut c_crate) = (vec![0.0; m * n], vec![0.0; m * n]);
        let reps = (BATCH_WORK / (m * k * n)).max(1);
        let gflops = |secs: f64| 2.0 * (m * k * n * reps) as f64 / secs / 1e9;
        let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        // a·bᵀ: the backend's `gemm` runs its own dot-product path, not the packed one.
        let nt = !a_t && b_t;
        let (mut default, mut default_ratio) = (Vec::new(), Vec::new());
        // One untimed call each first (pack buffers, pool start-up).
        gemm_with(kernel, m, k, n, &a, a_t, &b, b_t, 0.0, &mut c_ours);
        crate_gemm(m, k, n, &a, a_t, &b, b_t, 0.0, &mut c_crate);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..reps {
                gemm_with(kernel, m, k, n, &a, a_t, &b, b_t, 0.0, &mut c_ours);
            }
            let x = gflops(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..reps {
                crate_gemm(m, k, n, &a, a_t, &b, b_t, 0.0, &mut c_crate);
            }
            let y = gflops(t.elapsed().as_secs_f64());
            if nt {
                let t = Instant::now();
                for _ in 0..reps {
                    gemm(m, k, n, &a, a_t, &b, b_t, 0.0, &mut c_ours);
                }
                let z = gflops(t.elapsed().as_secs_f64());
                default.push(z);
                default_ratio.push(z / y);
            }
            ours.push(x);
            theirs.push(y);
            ratio.push(x / y);
        }
        let max_diff = c_ours
            .iter()
            .zip(&c_crate)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        let r = median(ratio);
        let nt_line = if nt {
            let d = median(default_ratio);
            ratios.push(d);
            format!(
                "; backend gemm (dot product) {:.1} GFLOP/s, ratio {d:.2}",
                median(default)
            )
        } else {
            ratios.push(r);
            String::new()
        };
        println!(
            "m{m} k{k} n{n} a_t {a_t} b_t {b_t}: artgan {:.1} GFLOP/s, gemm crate {:.1} GFLOP/s, \
             ratio {r:.2}{nt_line} (max |difference| {max_diff:.1e})",
            median(ours),
            median(theirs),
        );
    }
    println!(
        "median ratio (the backend's gemm / crate) over shapes {:.2}; load average {}",
        median(ratios),
        load_average()
    );
}
