//! The AVX-512 and AVX2+FMA micro-kernels and the AVX-512 a·bᵀ dot product (see `super`).

use super::{check_tile, MicroKernel};
use std::arch::x86_64::*;

/// Proof that the CPU has AVX-512F: only [`Avx512::new`] makes one.
#[derive(Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    pub fn new() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

/// Proof that the CPU has AVX2 and FMA: only [`Avx2::new`] makes one.
#[derive(Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    pub fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// Rows of A and of B (b transposed) per dot-product tile: 24 accumulators.
const NT_ROWS: usize = 4;
const NT_COLS: usize = 6;
/// Depth of one pass over a block's tiles: its A and B rows (NT_BLOCK_ROWS + NT_BLOCK_COLS
/// of NT_DEPTH floats, 160 KiB) stay in L2 meanwhile, one tile's in L1.
const NT_DEPTH: usize = 512;
/// Most rows and columns of c per task (multiples of NT_ROWS and NT_COLS).
const NT_BLOCK_ROWS: usize = 32;
const NT_BLOCK_COLS: usize = 48;

/// Lane sums of one dot-product tile: 16 floats per element.
type NtAcc = [f32; 16 * NT_ROWS * NT_COLS];

impl Avx512 {
    /// `c = a·bᵀ (+ c)`, a `[m, k]`, b `[n, k]`: each element is 16 lane sums (lane `l`:
    /// the fused chain over `p ≡ l mod 16`, p ascending), added up in lane order, then
    /// added to c. Threads take blocks of c.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nt(
        self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        add_to_c: bool,
        c: &mut [f32],
    ) {
        assert!(m > 0 && n > 0 && k > 0);
        assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
        // Rows past the end repeat the last one (valid memory; their sums are dropped).
        let a_rows = |i: usize| -> [&[f32]; NT_ROWS] {
            std::array::from_fn(|r| &a[(i + r).min(m - 1) * k..][..k])
        };
        let b_rows = |j: usize| -> [&[f32]; NT_COLS] {
            std::array::from_fn(|q| &b[(j + q).min(n - 1) * k..][..k])
        };
        let max = (NT_BLOCK_ROWS, NT_BLOCK_COLS);
        let (mc, nc) = super::blocks(m, n, m * n * k, max, (NT_ROWS, NT_COLS));
        super::for_each_block(&mut c[..m * n], n, mc, nc, |i0, j0, rows| {
            let (bands, tiles) = (
                rows.len().div_ceil(NT_ROWS),
                rows[0].len().div_ceil(NT_COLS),
            );
            let mut acc: Vec<NtAcc> = vec![[0.0; 16 * NT_ROWS * NT_COLS]; bands * tiles];
            // Per depth slice, every tile of the block: the slice's A and B rows stay in
            // L2 while each is reused by the whole block.
            for p0 in (0..k).step_by(NT_DEPTH) {
                let depth = NT_DEPTH.min(k - p0);
                for (band, acc) in acc.chunks_exact_mut(tiles).enumerate() {
                    let a = a_rows(i0 + band * NT_ROWS);
                    for (t, tile) in acc.iter_mut().enumerate() {
                        let b = b_rows(j0 + t * NT_COLS);
                        // SAFETY: `self` proves AVX-512F; every row holds k ≥ p0 + depth
                        // floats (sliced above), which is all nt_tile reads.
                        unsafe { nt_tile(&a, &b, p0, depth, tile) };
                    }
                }
            }
            for (r, row) in rows.iter_mut().enumerate() {
                for (q, out) in row.iter_mut().enumerate() {
                    let tile = &acc[(r / NT_ROWS) * tiles + q / NT_COLS];
                    let lane0 = ((r % NT_ROWS) * NT_COLS + q % NT_COLS) * 16;
                    let sum = tile[lane0..lane0 + 16].iter().fold(0.0f32, |s, &v| s + v);
                    *out = if add_to_c { *out + sum } else { sum };
                }
            }
        });
    }
}

impl Avx512 {
    /// `dst[p·w + i] = data[row_start[p] + col_start[i]]` for every `p` and `i`: a
    /// [`super::Gathered`] panel whose columns are scattered, 16 lanes per gather instruction
    /// (about 3x the scalar loop's speed, whose bounds checks and single loads dominated the
    /// backward-filter pack).
    pub fn gather_rows(
        self,
        data: &[f32],
        row_start: &[usize],
        col_start: &[usize],
        w: usize,
        dst: &mut [f32],
    ) {
        let (Some(&max_row), Some(&max_col)) = (row_start.iter().max(), col_start.iter().max())
        else {
            return;
        };
        assert!(max_row + max_col < data.len() && max_col <= i32::MAX as usize);
        assert!(col_start.len() <= w && dst.len() >= row_start.len() * w);
        for (c, cols) in col_start.chunks(16).enumerate() {
            let mut offsets = [0i32; 16];
            for (o, &col) in offsets.iter_mut().zip(cols) {
                *o = col as i32;
            }
            let mask = (((1u32 << cols.len()) - 1) & 0xffff) as __mmask16;
            // SAFETY: `self` proves AVX-512F; every enabled lane reads data[row + col] with
            // row + col ≤ max_row + max_col < data.len(), and writes dst[p·w + 16c + lane]
            // with 16c + lane < col_start.len() ≤ w and p < row_start.len() (asserted).
            unsafe { gather_chunk(data.as_ptr(), row_start, &offsets, mask, w, c * 16, dst) };
        }
    }
}

/// Lanes `mask` of `dst[p·w + at ..]` from `data[row_start[p] + offsets[lane]]`, every `p`.
/// Caller guarantees AVX-512F and those reads and writes in bounds.
#[target_feature(enable = "avx512f")]
unsafe fn gather_chunk(
    data: *const f32,
    row_start: &[usize],
    offsets: &[i32; 16],
    mask: __mmask16,
    w: usize,
    at: usize,
    dst: &mut [f32],
) {
    // SAFETY: offsets holds 16 i32.
    let idx = unsafe { _mm512_loadu_epi32(offsets.as_ptr()) };
    for (p, &row) in row_start.iter().enumerate() {
        // SAFETY: the caller's bounds (see gather_rows).
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, data.add(row));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(p * w + at), mask, v);
        }
    }
}

/// Adds to `acc`'s lanes of element `(r, q)` the lane-wise products of `a[r][p0..]` and
/// `b[q][p0..]`, `depth` of them, 16 at a time (the tail masked). Caller guarantees
/// AVX-512F and rows of at least p0 + depth floats.
#[target_feature(enable = "avx512f")]
unsafe fn nt_tile(
    a: &[&[f32]; NT_ROWS],
    b: &[&[f32]; NT_COLS],
    p0: usize,
    depth: usize,
    acc: &mut NtAcc,
) {
    let mut s = [_mm512_setzero_ps(); NT_ROWS * NT_COLS];
    for (e, s) in s.iter_mut().enumerate() {
        // SAFETY: acc holds 16 floats per element.
        *s = unsafe { _mm512_loadu_ps(acc.as_ptr().add(16 * e)) };
    }
    let end = p0 + depth;
    let mut p = p0;
    while p < end {
        let mask: __mmask16 = if end - p >= 16 {
            0xffff
        } else {
            (1u16 << (end - p)) - 1
        };
        let mut bv = [_mm512_setzero_ps(); NT_COLS];
        for (bv, row) in bv.iter_mut().zip(b) {
            // SAFETY: the masked load reads only enabled lanes, all below p0 + depth ≤
            // the row's length (caller).
            *bv = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(p)) };
        }
        for (s, row) in s.chunks_exact_mut(NT_COLS).zip(a) {
            // SAFETY: as for b.
            let av = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(p)) };
            for (s, &bv) in s.iter_mut().zip(&bv) {
                *s = _mm512_fmadd_ps(av, bv, *s);
            }
        }
        p += 16;
    }
    for (e, &s) in s.iter().enumerate() {
        // SAFETY: as for the loads.
        unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(16 * e), s) };
    }
}

/// 8 rows × 2 vectors of 16: 16 accumulators of the 32 zmm registers, B loaded once per
/// `p` and each A value broadcast once.
impl MicroKernel for Avx512 {
    const MR: usize = 8;
    const NR: usize = 32;

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], load: bool) {
        check_tile(kc, Self::MR, Self::NR, a, b, c);
        // SAFETY: `self` exists only where the CPU has AVX-512F, and check_tile asserted
        // the lengths the kernel reads and writes (kc·MR of a, kc·NR of b, NR per row).
        unsafe { avx512_tile::<8, 2>(kc, a.as_ptr(), b.as_ptr(), c, load) }
    }
}

/// 6 rows × 2 vectors of 8: 12 accumulators of the 16 ymm registers.
impl MicroKernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], load: bool) {
        check_tile(kc, Self::MR, Self::NR, a, b, c);
        // SAFETY: as for Avx512, with AVX2 and FMA.
        unsafe { avx2_tile::<6, 2>(kc, a.as_ptr(), b.as_ptr(), c, load) }
    }
}

/// `$name::<MR, NV>`: the packed micro-kernel on vectors of `$lanes` floats, NV per row.
/// Caller guarantees the CPU features `$features`, `a` readable for kc·MR floats, `b` for
/// kc·$lanes·NV, `c` MR rows of at least $lanes·NV floats.
macro_rules! packed_tile {
    ($name:ident, $features:literal, $lanes:literal, $zero:ident, $load:ident, $splat:ident,
     $fma:ident, $store:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const MR: usize, const NV: usize>(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: &mut [&mut [f32]],
            load: bool,
        ) {
            let mut acc = [[$zero(); NV]; MR];
            if load {
                for (acc, row) in acc.iter_mut().zip(c.iter()) {
                    for (v, s) in acc.iter_mut().enumerate() {
                        // SAFETY: the row holds $lanes·NV floats (caller).
                        *s = unsafe { $load(row.as_ptr().add($lanes * v)) };
                    }
                }
            }
            for p in 0..kc {
                let mut bv = [$zero(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: p < kc, so (p·NV + v + 1)·$lanes ≤ kc·$lanes·NV floats of b.
                    *bv = unsafe { $load(b.add((p * NV + v) * $lanes)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: p·MR + i < kc·MR floats of a (caller).
                    let ai = $splat(unsafe { *a.add(p * MR + i) });
                    for (s, &bv) in acc.iter_mut().zip(&bv) {
                        *s = $fma(ai, bv, *s);
                    }
                }
            }
            for (acc, row) in acc.iter().zip(c.iter_mut()) {
                for (v, &s) in acc.iter().enumerate() {
                    // SAFETY: as for the loads.
                    unsafe { $store(row.as_mut_ptr().add($lanes * v), s) };
                }
            }
        }
    };
}

packed_tile!(
    avx512_tile,
    "avx512f",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
packed_tile!(
    avx2_tile,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
