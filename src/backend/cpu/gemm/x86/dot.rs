//! The a·bᵀ dot product on AVX-512 and AVX2 (see [`NtKernel`]): c's elements are lane sums
//! read in place along k, for the skinny, deep shapes of backward-filter.

use super::{Avx2, Avx512};
use crate::backend::cpu::gemm::{blocks, for_each_block};
use std::arch::x86_64::*;

/// Most rows and columns of c per a·bᵀ task (multiples of every dot-product tile's sides).
const NT_BLOCK_ROWS: usize = 32;
const NT_BLOCK_COLS: usize = 48;
/// Depth of one pass over a block's tiles: its A and B rows (NT_BLOCK_ROWS + NT_BLOCK_COLS
/// of NT_DEPTH floats, 160 KiB) stay in L2 meanwhile, one tile's in L1.
const NT_DEPTH: usize = 512;

/// One depth slice of an `R × C` dot-product tile: `nt_tile!`'s functions.
type NtTile<const R: usize, const C: usize> =
    unsafe fn(&[&[f32]; R], &[&[f32]; C], usize, usize, &mut [f32]);

/// `c = a·bᵀ (+ c)`, a `[m, k]`, b `[n, k]`, on `R × C` tiles of elements read in place along
/// k, `LANES` at a time: each element is `LANES` lane sums (lane `l`: the fused chain over
/// `p ≡ l mod LANES`, p ascending), added up in lane order, then added to c. Threads take
/// blocks of c. `tile` adds one depth slice to a tile's lane sums (see `nt_tile!`); the
/// caller guarantees the CPU features it needs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_nt<const LANES: usize, const R: usize, const C: usize>(
    tile: NtTile<R, C>,
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
    let a_rows =
        |i: usize| -> [&[f32]; R] { std::array::from_fn(|r| &a[(i + r).min(m - 1) * k..][..k]) };
    let b_rows =
        |j: usize| -> [&[f32]; C] { std::array::from_fn(|q| &b[(j + q).min(n - 1) * k..][..k]) };
    let tile_len = LANES * R * C;
    let max = (NT_BLOCK_ROWS, NT_BLOCK_COLS);
    let (mc, nc) = blocks(m, n, m * n * k, max, (R, C));
    for_each_block(&mut c[..m * n], n, mc, nc, |i0, j0, rows| {
        let (bands, tiles) = (rows.len().div_ceil(R), rows[0].len().div_ceil(C));
        let mut acc = vec![0.0f32; bands * tiles * tile_len];
        // Per depth slice, every tile of the block: the slice's A and B rows stay in L2
        // while each is reused by the whole block.
        for p0 in (0..k).step_by(NT_DEPTH) {
            let depth = NT_DEPTH.min(k - p0);
            for (band, acc) in acc.chunks_exact_mut(tiles * tile_len).enumerate() {
                let a = a_rows(i0 + band * R);
                for (t, acc) in acc.chunks_exact_mut(tile_len).enumerate() {
                    // SAFETY: the CPU features are the caller's; every row holds
                    // k ≥ p0 + depth floats (sliced above) and acc LANES·R·C, which is all
                    // the tile reads and writes.
                    unsafe { tile(&a, &b_rows(j0 + t * C), p0, depth, acc) };
                }
            }
        }
        for (r, row) in rows.iter_mut().enumerate() {
            for (q, out) in row.iter_mut().enumerate() {
                let tile = (r / R) * tiles + q / C;
                let lane0 = tile * tile_len + ((r % R) * C + q % C) * LANES;
                let sum = acc[lane0..lane0 + LANES].iter().fold(0.0f32, |s, &v| s + v);
                *out = if add_to_c { *out + sum } else { sum };
            }
        }
    });
}

/// The a·bᵀ dot product's kernels: AVX-512 on 16 lanes, 4 × 6 tiles (24 of the 32 zmm
/// registers); AVX2 on 8 lanes, 4 × 3 tiles (12 of the 16 ymm).
#[derive(Clone, Copy)]
pub enum NtKernel {
    Avx512(Avx512),
    Avx2(Avx2),
}

impl NtKernel {
    /// [`gemm_nt`] on this kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        add_to_c: bool,
        c: &mut [f32],
    ) {
        // SAFETY: the Avx512 and Avx2 proofs exist only where the CPU has those features.
        unsafe {
            match self {
                NtKernel::Avx512(_) => {
                    gemm_nt::<16, 4, 6>(nt_tile_avx512, m, k, n, a, b, add_to_c, c)
                }
                NtKernel::Avx2(_) => gemm_nt::<8, 4, 3>(nt_tile_avx2, m, k, n, a, b, add_to_c, c),
            }
        }
    }
}

/// `$name::<R, C>(a, b, p0, depth, acc)` adds to `acc`'s lanes of element `(r, q)` the
/// lane-wise products of `a[r][p0..]` and `b[q][p0..]`, `depth` of them, `$lanes` at a time
/// (the tail masked by `$mask(remaining)`). Caller guarantees the CPU features `$features`,
/// rows of at least p0 + depth floats and `acc` of `$lanes·R·C`.
macro_rules! nt_tile {
    ($name:ident, $features:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident,
     $mask:ident, $masked_load:ident, $fma:ident, $store:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const C: usize>(
            a: &[&[f32]; R],
            b: &[&[f32]; C],
            p0: usize,
            depth: usize,
            acc: &mut [f32],
        ) {
            assert!(acc.len() >= $lanes * R * C);
            let mut s: [[$vec; C]; R] = [[$zero(); C]; R];
            for (e, s) in s.iter_mut().flatten().enumerate() {
                // SAFETY: acc holds $lanes floats per element (asserted).
                *s = unsafe { $load(acc.as_ptr().add($lanes * e)) };
            }
            let end = p0 + depth;
            let mut p = p0;
            // Whole vectors with plain loads (a masked load costs more on some CPUs), then
            // the tail masked: the same products either way.
            while p + $lanes <= end {
                let mut bv: [$vec; C] = [$zero(); C];
                for (bv, row) in bv.iter_mut().zip(b) {
                    // SAFETY: p + $lanes ≤ p0 + depth ≤ each row's length (caller).
                    *bv = unsafe { $load(row.as_ptr().add(p)) };
                }
                for (s, row) in s.iter_mut().zip(a) {
                    // SAFETY: as for b.
                    let av = unsafe { $load(row.as_ptr().add(p)) };
                    for (s, &bv) in s.iter_mut().zip(&bv) {
                        *s = $fma(av, bv, *s);
                    }
                }
                p += $lanes;
            }
            if p < end {
                // SAFETY: the masked loads read only enabled lanes, all below
                // p0 + depth ≤ each row's length (caller).
                let mask = unsafe { $mask(end - p) };
                let mut bv: [$vec; C] = [$zero(); C];
                for (bv, row) in bv.iter_mut().zip(b) {
                    *bv = unsafe { $masked_load(row.as_ptr().add(p), mask) };
                }
                for (s, row) in s.iter_mut().zip(a) {
                    // SAFETY: as for b.
                    let av = unsafe { $masked_load(row.as_ptr().add(p), mask) };
                    for (s, &bv) in s.iter_mut().zip(&bv) {
                        *s = $fma(av, bv, *s);
                    }
                }
            }
            for (e, &s) in s.iter().flatten().enumerate() {
                // SAFETY: as for the loads.
                unsafe { $store(acc.as_mut_ptr().add($lanes * e), s) };
            }
        }
    };
}

/// The first `min(remaining, 16)` lanes.
#[target_feature(enable = "avx512f")]
unsafe fn lanes16(remaining: usize) -> __mmask16 {
    if remaining >= 16 {
        0xffff
    } else {
        (1u16 << remaining) - 1
    }
}

/// The first `min(remaining, 8)` lanes, as an AVX2 load mask.
#[target_feature(enable = "avx2")]
unsafe fn lanes8(remaining: usize) -> __m256i {
    let live = _mm256_set1_epi32(remaining.min(8) as i32);
    _mm256_cmpgt_epi32(live, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// `_mm512_maskz_loadu_ps` with the pointer first, as `_mm256_maskload_ps` takes it.
#[target_feature(enable = "avx512f")]
unsafe fn masked_load16(ptr: *const f32, mask: __mmask16) -> __m512 {
    // SAFETY: the caller's (only enabled lanes are read).
    unsafe { _mm512_maskz_loadu_ps(mask, ptr) }
}

nt_tile!(
    nt_tile_avx512,
    "avx512f",
    16,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    lanes16,
    masked_load16,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
nt_tile!(
    nt_tile_avx2,
    "avx2,fma",
    8,
    __m256,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    lanes8,
    _mm256_maskload_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
