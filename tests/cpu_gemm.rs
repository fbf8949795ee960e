//! The CPU backend's packed GEMM (`artgan::backend::cpu::gemm`) against a plain f64 triple
//! loop, for every micro-kernel this CPU runs (each forced through `gemm_with`), every
//! transpose combination, beta 0 and 1, and shapes from 1×1×1 through odd edge tiles to the
//! DCGAN convolution GEMMs; and its bits against the fused (or, for the portable kernel,
//! unfused) multiply-add chain along k that it promises, whatever the thread count. The
//! default `gemm` and the gemm crate wrapper are checked against the same loop; the a·bᵀ dot
//! products (AVX-512, AVX2: `gemm_nt_with`) against the lane order they promise too.
//!
//! Error bound: a float sum of `k` products (plus c) is within `γ_{k+1}·(Σ|aᵢbᵢ| + |c|)` of
//! the exact one, `γ_n ≈ n·ε₃₂` (Higham, Accuracy and Stability, §3.1); the f64 loop is exact
//! to well within that.

use artgan::backend::cpu::{
    crate_gemm, gemm, gemm_gathered, gemm_nt_with, gemm_with, Gathered, Kernel,
};
use artgan::rng::Rng;

const KERNELS: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

/// (m, k, n): tiny, odd (edge tiles on every side of every kernel's tile), several KC blocks,
/// and the batched convolution GEMMs of dcgan 32 px, width 32 (benches/results/gemm-pick-*).
const SHAPES: [(usize, usize, usize); 16] = [
    (1, 1, 1),
    (7, 13, 5),
    (1, 300, 1),
    (9, 1, 33),
    (17, 31, 49),
    (6, 257, 16),
    (8, 513, 32),
    (33, 7, 97),
    (65, 300, 130),
    (32, 48, 1024),
    (64, 512, 256),
    (2048, 100, 64),
    (64, 1024, 48),
    (48, 64, 1000),
    (5, 2500, 7),
    (13, 1500, 97),
];

/// Which GEMM a case runs through.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `gemm_with` this kernel (the packed path).
    Kernel(Kernel),
    /// The backend's `gemm` (packed, or for a·bᵀ its own path).
    Default,
    /// `crate_gemm`: a·bᵀ's fallback without AVX.
    Crate,
    /// `gemm_nt_with` this kernel: a·bᵀ as a dot product (b_t only).
    Nt(Kernel),
}

impl From<Kernel> for Via {
    fn from(k: Kernel) -> Via {
        Via::Kernel(k)
    }
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Case {
    /// Random non-zero inputs (magnitudes 0.1 to 1, either sign), so no product vanishes.
    fn new(m: usize, k: usize, n: usize, a_t: bool, b_t: bool, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let mut nonzero = |len: usize| -> Vec<f32> {
            let mag = rng.uniform_vec(len, 0.1, 1.0);
            let sign = rng.uniform_vec(len, -1.0, 1.0);
            mag.iter()
                .zip(&sign)
                .map(|(&v, &s)| if s < 0.0 { -v } else { v })
                .collect()
        };
        Case {
            a: nonzero(m * k),
            b: nonzero(k * n),
            c: nonzero(m * n),
            m,
            k,
            n,
            a_t,
            b_t,
        }
    }

    fn a_at(&self, i: usize, p: usize) -> f32 {
        self.a[if self.a_t {
            p * self.m + i
        } else {
            i * self.k + p
        }]
    }

    fn b_at(&self, p: usize, j: usize) -> f32 {
        self.b[if self.b_t {
            j * self.k + p
        } else {
            p * self.n + j
        }]
    }

    fn run(&self, kernel: impl Into<Via>, beta: f32) -> Vec<f32> {
        let mut c = self.c.clone();
        let (m, k, n, a, b) = (self.m, self.k, self.n, &self.a, &self.b);
        match kernel.into() {
            Via::Kernel(kernel) => {
                gemm_with(kernel, m, k, n, a, self.a_t, b, self.b_t, beta, &mut c)
            }
            Via::Default => gemm(m, k, n, a, self.a_t, b, self.b_t, beta, &mut c),
            Via::Crate => crate_gemm(m, k, n, a, self.a_t, b, self.b_t, beta, &mut c),
            Via::Nt(kernel) => {
                assert!(!self.a_t && self.b_t);
                gemm_nt_with(kernel, m, k, n, a, b, beta, &mut c)
            }
        }
        c
    }

    /// `(exact value, Σ|aᵢbᵢ| + |c|)` per element, in f64.
    fn reference(&self, beta: f32) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(self.m * self.n);
        for i in 0..self.m {
            for j in 0..self.n {
                let c0 = beta as f64 * self.c[i * self.n + j] as f64;
                let (mut sum, mut mag) = (c0, c0.abs());
                for p in 0..self.k {
                    let prod = self.a_at(i, p) as f64 * self.b_at(p, j) as f64;
                    sum += prod;
                    mag += prod.abs();
                }
                out.push((sum, mag));
            }
        }
        out
    }

    /// The chain the kernels promise: from `beta·c`, one multiply-add per `p` in order.
    fn chain(&self, beta: f32, fused: bool) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.m * self.n);
        for i in 0..self.m {
            for j in 0..self.n {
                let mut s = if beta == 0.0 {
                    0.0
                } else {
                    self.c[i * self.n + j]
                };
                for p in 0..self.k {
                    let (x, y) = (self.a_at(i, p), self.b_at(p, j));
                    s = if fused { x.mul_add(y, s) } else { s + x * y };
                }
                out.push(s);
            }
        }
        out
    }

    /// The AVX a·bᵀ order: `lanes` lane sums (lane l: the fused chain over p ≡ l mod lanes),
    /// added up in lane order, then added to `beta·c`.
    fn lane_sums(&self, beta: f32, lanes: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.m * self.n);
        for i in 0..self.m {
            for j in 0..self.n {
                let mut lanes = vec![0.0f32; lanes];
                let count = lanes.len();
                for p in 0..self.k {
                    let lane = &mut lanes[p % count];
                    *lane = self.a_at(i, p).mul_add(self.b_at(p, j), *lane);
                }
                let sum = lanes.iter().fold(0.0f32, |s, &v| s + v);
                out.push(if beta == 0.0 {
                    sum
                } else {
                    self.c[i * self.n + j] + sum
                });
            }
        }
        out
    }

    fn tag(&self, kernel: impl Into<Via>, beta: f32) -> String {
        let kernel = kernel.into();
        format!(
            "{kernel:?} m{} k{} n{} a_t {} b_t {} beta {beta}",
            self.m, self.k, self.n, self.a_t, self.b_t
        )
    }
}

/// The kernels this CPU runs (the others are named on stderr: the test cannot reach them here).
fn available() -> Vec<Kernel> {
    let (yes, no): (Vec<Kernel>, Vec<Kernel>) = KERNELS.into_iter().partition(|k| k.is_available());
    if !no.is_empty() {
        eprintln!("not tested, this CPU lacks their features: {no:?}");
    }
    yes
}

#[test]
fn matches_an_f64_triple_loop_for_every_kernel_shape_transpose_and_beta() {
    let kernels = available();
    let mut seed = 0;
    for &(m, k, n) in &SHAPES {
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            seed += 1;
            let case = Case::new(m, k, n, a_t, b_t, seed);
            for beta in [0.0, 1.0] {
                let want = case.reference(beta);
                let vias = kernels.iter().map(|&k| Via::Kernel(k));
                for kernel in vias.chain([Via::Default, Via::Crate]) {
                    let got = case.run(kernel, beta);
                    let tag = case.tag(kernel, beta);
                    for (e, (&g, &(w, mag))) in got.iter().zip(&want).enumerate() {
                        let tol = (k + 2) as f64 * f32::EPSILON as f64 * mag;
                        assert!(
                            (g as f64 - w).abs() <= tol,
                            "{tag}: element {e}: got {g}, exact {w}, tolerance {tol}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_element_is_one_multiply_add_chain_along_k() {
    for kernel in available() {
        let fused = kernel != Kernel::Portable;
        for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
            let case = Case::new(m, k, n, s % 2 == 1, s % 3 == 1, 100 + s as u64);
            for beta in [0.0, 1.0] {
                let want = case.chain(beta, fused);
                let got = case.run(kernel, beta);
                let tag = case.tag(kernel, beta);
                for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{tag}: element {e}: {g} vs {w}");
                }
            }
        }
    }
}

/// The a·bᵀ dot products are 16 (AVX-512) or 8 (AVX2) lane sums, and the default `gemm`
/// runs the fastest one (the gemm crate without AVX).
#[test]
fn a_times_b_transposed_is_lane_sums_on_each_avx_kernel() {
    let kernels = available();
    for (s, &(m, k, n)) in SHAPES.iter().enumerate() {
        let case = Case::new(m, k, n, false, true, 200 + s as u64);
        for beta in [0.0, 1.0] {
            for &kernel in &kernels {
                let lanes = match kernel {
                    Kernel::Avx512 => 16,
                    Kernel::Avx2 => 8,
                    Kernel::Portable => continue,
                };
                let want = case.lane_sums(beta, lanes);
                let got = case.run(Via::Nt(kernel), beta);
                let tag = case.tag(Via::Nt(kernel), beta);
                for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{tag}: element {e}: {g} vs {w}");
                }
            }
            let fastest = Via::Nt(kernels[0]);
            assert_eq!(case.run(Via::Default, beta), case.run(fastest, beta));
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let on = |threads: usize, case: &Case, kernel: Via| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| case.run(kernel, 1.0))
    };
    // Large enough to be split into many blocks, with edge tiles on both sides; b transposed,
    // so the default `gemm` runs its a·bᵀ path.
    let case = Case::new(131, 2517, 301, false, true, 7);
    let kernels = available();
    let vias = kernels.iter().map(|&k| Via::Kernel(k));
    let nts = kernels.iter().map(|&k| Via::Nt(k));
    for kernel in vias.chain(nts).chain([Via::Default, Via::Crate]) {
        let one = on(1, &case, kernel);
        for threads in [2, 3] {
            assert!(
                one.iter()
                    .zip(on(threads, &case, kernel))
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kernel:?}: 1 vs {threads} threads"
            );
        }
    }
}

#[test]
fn the_default_is_the_fastest_available_kernel_and_avx_kernels_agree() {
    let kernels = available();
    assert!(kernels.contains(&Kernel::Portable));
    assert_eq!(Kernel::detect(), kernels[0]);
    let case = Case::new(45, 301, 77, true, false, 9);
    assert_eq!(case.run(Via::Default, 1.0), case.run(kernels[0], 1.0));
    // Both AVX kernels run the same fused chain, so they agree to the bit.
    if kernels.contains(&Kernel::Avx512) && kernels.contains(&Kernel::Avx2) {
        assert_eq!(case.run(Kernel::Avx512, 1.0), case.run(Kernel::Avx2, 1.0));
    }
}

#[test]
fn zero_sizes_and_bad_arguments() {
    // k = 0: c = beta·c.
    let mut c = vec![3.0; 6];
    gemm(2, 0, 3, &[], false, &[], false, 1.0, &mut c);
    assert_eq!(c, vec![3.0; 6]);
    gemm(2, 0, 3, &[], false, &[], true, 0.0, &mut c);
    assert_eq!(c, vec![0.0; 6]);
    // Elements past m·n are left alone.
    let mut c = vec![5.0; 3];
    gemm(1, 1, 2, &[2.0], false, &[1.0, 4.0], false, 0.0, &mut c);
    assert_eq!(c, vec![2.0, 8.0, 5.0]);
    let beta = std::panic::catch_unwind(|| {
        gemm(1, 1, 1, &[1.0], false, &[1.0], false, 0.5, &mut [0.0]);
    });
    assert!(beta.is_err(), "beta 0.5 must be refused");
    let short = std::panic::catch_unwind(|| {
        gemm(
            2,
            2,
            2,
            &[1.0; 3],
            false,
            &[1.0; 4],
            false,
            0.0,
            &mut [0.0; 4],
        );
    });
    assert!(short.is_err(), "a too short must be refused");
}

/// `gemm_gathered` packs B straight from `data` through row and column starts: it must give
/// the bits of the detected kernel's `gemm_with` on that B written out, for column starts in
/// runs of every length the packing special-cases (4, 8, 16, 32), of mixed lengths, and
/// scattered, with panels cut mid-run and edge tiles on every side; and for scattered
/// columns (a backward-filter's taps) whose row starts follow on in runs (a window row of
/// pixels, which the AVX2 packing reads as vectors and transposes: runs of 8, 4 and other
/// lengths, column counts that are not a multiple of 8).
#[test]
fn gathered_b_gives_the_bits_of_the_written_out_matrix() {
    let mut rng = Rng::new(21);
    let data = rng.uniform_vec(20_000, -1.0, 1.0);
    // Starts in runs of `run` consecutive values (0: runs of 1 to `drawn` values, drawn; 1:
    // all scattered), `count` of them below `below`.
    let starts = |rng: &mut Rng, count: usize, run: usize, drawn: usize, below: usize| {
        let mut out = Vec::new();
        while out.len() < count {
            let len = if run > 0 { run } else { 1 + rng.below(drawn) };
            let start = rng.below(below);
            out.extend((start..start + len).take(count - out.len()));
        }
        out
    };
    // (m, k, n, run length of the column starts (drawn up to 11), of the row starts (up to 20)).
    let cases = [
        (7, 13, 40, 4, 1),
        (17, 300, 96, 8, 1),
        (64, 48, 160, 16, 1),
        (9, 257, 99, 32, 1),
        (33, 70, 131, 0, 1),
        (1, 5, 3, 1, 1),
        (40, 300, 64, 1, 8),
        (13, 270, 45, 1, 4),
        (6, 77, 19, 1, 0),
        (20, 512, 16, 1, 16),
        (5, 33, 7, 1, 8),
    ];
    for (m, k, n, run, row_run) in cases {
        let row_start = starts(&mut rng, k, row_run, 20, 10_000);
        let col_start = starts(&mut rng, n, run, 11, 9_000);
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b: Vec<f32> = (0..k * n)
            .map(|i| data[row_start[i / n] + col_start[i % n]])
            .collect();
        // a as stored ([m, k]) and read transposed (stored [k, m]).
        for a_t in [false, true] {
            let mut want = vec![0.0; m * n];
            gemm_with(
                Kernel::detect(),
                m,
                k,
                n,
                &a,
                a_t,
                &b,
                false,
                0.0,
                &mut want,
            );
            let mut got = vec![f32::NAN; m * n];
            let cols = Gathered {
                data: &data,
                row_start: &row_start,
                col_start: &col_start,
            };
            gemm_gathered(m, k, n, &a, a_t, &cols, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "m {m} k {k} n {n} runs {run} row runs {row_run} a_t {a_t}"
            );
        }
    }
}
