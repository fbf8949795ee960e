//! The AVX-512 and AVX2+FMA micro-kernels and the AVX-512 a·bᵀ dot product (see `super`).

use super::{check_tile, MicroKernel};
use std::arch::x86_64::*;

mod dot;
pub use dot::NtKernel;

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

/// What the gathers' raw accesses rely on: every `data[row + col]` in bounds (and each col an
/// i32 offset), at most `w` columns and `w` floats of `dst` per row; false if there is
/// nothing to gather.
fn check_gather(
    data: &[f32],
    row_start: &[usize],
    col_start: &[usize],
    w: usize,
    dst: &[f32],
) -> bool {
    let (Some(&max_row), Some(&max_col)) = (row_start.iter().max(), col_start.iter().max()) else {
        return false;
    };
    assert!(max_row + max_col < data.len() && max_col <= i32::MAX as usize);
    assert!(col_start.len() <= w && dst.len() >= row_start.len() * w);
    true
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
        if !check_gather(data, row_start, col_start, w, dst) {
            return;
        }
        for (c, cols) in col_start.chunks(16).enumerate() {
            let mut offsets = [0i32; 16];
            for (o, &col) in offsets.iter_mut().zip(cols) {
                *o = col as i32;
            }
            let mask = (((1u32 << cols.len()) - 1) & 0xffff) as __mmask16;
            // SAFETY: `self` proves AVX-512F; every enabled lane reads data[row + col] with
            // row + col ≤ max row + max col < data.len(), and writes dst[p·w + 16c + lane]
            // with 16c + lane < col_start.len() ≤ w and p < row_start.len() (check_gather).
            unsafe { gather_chunk(data.as_ptr(), row_start, &offsets, mask, w, c * 16, dst) };
        }
    }
}

impl Avx2 {
    /// `dst[p·w + i] = data[row_start[p] + col_start[i]]` for every `p` and column `i` (lanes
    /// past `col_start.len()` untouched), read along the runs of consecutive row starts (a
    /// window row of output pixels): eight columns × eight (or four) `p` loaded as vectors and
    /// transposed in registers, where a gather loads one scattered float at a time.
    pub fn gather_along_k(
        self,
        data: &[f32],
        row_start: &[usize],
        col_start: &[usize],
        w: usize,
        dst: &mut [f32],
    ) {
        if !check_gather(data, row_start, col_start, w, dst) {
            return;
        }
        let vector_cols = col_start.len() / 8 * 8;
        let mut p = 0;
        while p < row_start.len() {
            let start = row_start[p];
            let len = 1 + row_start[p + 1..]
                .iter()
                .zip(start + 1..)
                .take_while(|(&r, next)| r == *next)
                .count();
            let mut t = 0;
            for (step, transpose) in [(8, transpose_8x8 as Transpose), (4, transpose_8x4)] {
                while t + step <= len {
                    for g in (0..vector_cols).step_by(8) {
                        let cols: &[usize; 8] = col_start[g..g + 8].try_into().expect("8");
                        // SAFETY: `self` proves AVX2; reads data[start + t + col ..][..step]
                        // whose last is row_start[p + t + step - 1] + col < data.len() (the
                        // run's starts follow on; check_gather), and writes
                        // dst[(p + t + q)·w + g..][..8] with g + 8 ≤ col_start.len() ≤ w and
                        // p + t + q < row_start.len() (check_gather).
                        unsafe {
                            transpose(
                                data.as_ptr().add(start + t),
                                cols,
                                dst.as_mut_ptr().add((p + t) * w + g),
                                w,
                            )
                        };
                    }
                    t += step;
                }
            }
            for q in 0..len {
                let first = if q < t { vector_cols } else { 0 };
                let (src, out) = (&data[start + q..], &mut dst[(p + q) * w..]);
                for (d, &col) in out[first..col_start.len()]
                    .iter_mut()
                    .zip(&col_start[first..])
                {
                    *d = src[col];
                }
            }
            p += len;
        }
    }
}

impl Avx2 {
    /// `dst[p·w + i] = data[rows[i] + p]` for `p < kc` and `i < rows.len() ≤ w` (lanes
    /// `rows.len()..w` left unspecified): a panel of rows that run along k (an A operand
    /// stored `[m, k]`), eight rows × eight `p` loaded as vectors and transposed in registers,
    /// where the scalar loop stored one float at a time, `w` apart.
    pub fn pack_rows_along_k(
        self,
        data: &[f32],
        rows: &[usize],
        kc: usize,
        w: usize,
        dst: &mut [f32],
    ) {
        let Some(&max_row) = rows.iter().max() else {
            return;
        };
        assert!(max_row + kc <= data.len() && rows.len() <= w && dst.len() >= kc * w);
        // A group of eight lanes wider than the panel (w = 6, the AVX2 tile's rows) spills
        // into the next p's slot: the vectors stop short of the last p, which the tail loop
        // below writes (over the spill).
        let spills = rows.len().div_ceil(8) * 8 > w;
        let vector_end = if spills { kc.saturating_sub(1) } else { kc } / 8 * 8;
        for g in (0..rows.len()).step_by(8) {
            let group = &rows[g..rows.len().min(g + 8)];
            // Lanes past the group repeat its last row (valid reads; those lanes are spare).
            let cols: [usize; 8] = std::array::from_fn(|i| group[i.min(group.len() - 1)]);
            for p in (0..vector_end).step_by(8) {
                // SAFETY: `self` proves AVX2; reads data[col + p..][..8] with p + 8 ≤ kc and
                // col + kc ≤ data.len(); writes dst[(p + q)·w + g..][..8] for q < 8, which
                // ends by (p + 8)·w ≤ kc·w where g + 8 ≤ w, else (w < 8, g = 0) by
                // (p + 8)·w + 8 - w < kc·w since p + 8 ≤ kc - 1 (asserted lengths).
                unsafe {
                    transpose_8x8(
                        data.as_ptr().add(p),
                        &cols,
                        dst.as_mut_ptr().add(p * w + g),
                        w,
                    )
                };
            }
        }
        for (i, &row) in rows.iter().enumerate() {
            let tail = data[row + vector_end..row + kc].iter();
            for (d, &v) in dst[vector_end * w..].chunks_exact_mut(w).zip(tail) {
                d[i] = v;
            }
        }
    }
}

/// `dst[q·w + i] = src[cols[i] + q]` for `i` < 8 and `q` below the transpose's step.
type Transpose = unsafe fn(*const f32, &[usize; 8], *mut f32, usize);

/// Eight columns × eight `q`, stored in ascending `q` (where `w` < 8, row `q`'s spare lanes
/// spill into row `q + 1`, which is stored after). Caller guarantees AVX2 and those reads and
/// writes in bounds.
#[target_feature(enable = "avx2")]
unsafe fn transpose_8x8(src: *const f32, cols: &[usize; 8], dst: *mut f32, w: usize) {
    // SAFETY: the caller's bounds.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(cols[i])) });
    let low = transpose_quads([r[0], r[1], r[2], r[3]]);
    let high = transpose_quads([r[4], r[5], r[6], r[7]]);
    let rows: [__m256; 8] = std::array::from_fn(|q| match q {
        0..4 => _mm256_permute2f128_ps::<0x20>(low[q], high[q]),
        _ => _mm256_permute2f128_ps::<0x31>(low[q - 4], high[q - 4]),
    });
    for (q, row) in rows.into_iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { _mm256_storeu_ps(dst.add(q * w), row) };
    }
}

/// Eight columns × four `q` (the runs of 4-pixel output rows): columns `i` and `i + 4` share
/// a vector. Caller guarantees AVX2 and those reads and writes in bounds.
#[target_feature(enable = "avx2")]
unsafe fn transpose_8x4(src: *const f32, cols: &[usize; 8], dst: *mut f32, w: usize) {
    // SAFETY: the caller's bounds.
    let r: [__m256; 4] = std::array::from_fn(|i| unsafe {
        let low = _mm256_castps128_ps256(_mm_loadu_ps(src.add(cols[i])));
        _mm256_insertf128_ps::<1>(low, _mm_loadu_ps(src.add(cols[i + 4])))
    });
    for (q, row) in transpose_quads(r).into_iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { _mm256_storeu_ps(dst.add(q * w), row) };
    }
}

/// Four vectors transposed within each 128-bit half: out `q` holds element `q` of each input
/// (of its low half, then of its high half). Pairs interleaved, then pairs of pairs.
#[target_feature(enable = "avx2")]
unsafe fn transpose_quads(r: [__m256; 4]) -> [__m256; 4] {
    let (t0, t1) = (
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
    );
    let (t2, t3) = (
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
    );
    [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ]
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

/// 8 rows × 2 vectors of 16: 16 accumulators of the 32 zmm registers, B loaded once per
/// `p` and each A value broadcast once.
impl MicroKernel for Avx512 {
    const MR: usize = 8;
    const NR: usize = 32;

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], j: usize, load: bool) {
        check_tile(kc, Self::MR, Self::NR, a, b, c, j);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: `self` exists only where the CPU has AVX-512F, and check_tile asserted
        // the lengths the kernel reads and writes (kc·MR of a, kc·NR of b, j + NR per row).
        unsafe {
            by_rows!(
                avx512_tile,
                8,
                [8, 7, 6, 5, 4, 3, 2, 1],
                kc,
                a,
                b,
                c,
                j,
                load
            )
        }
    }
}

/// 6 rows × 2 vectors of 8: 12 accumulators of the 16 ymm registers.
impl MicroKernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], j: usize, load: bool) {
        check_tile(kc, Self::MR, Self::NR, a, b, c, j);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: as for Avx512, with AVX2 and FMA.
        unsafe { by_rows!(avx2_tile, 6, [6, 5, 4, 3, 2, 1], kc, a, b, c, j, load) }
    }
}

/// `$tile::<rows, 2, $width>(..)` for `rows` = `c.len()`, one of `$rows` (check_tile bounds
/// it): a bottom-edge tile computes only its live rows of the `$width`-wide A panel.
macro_rules! by_rows {
    ($tile:ident, $width:literal, [$($rows:literal),*], $kc:expr, $a:expr, $b:expr, $c:expr,
     $j:expr, $load:expr) => {
        match $c.len() {
            $($rows => $tile::<$rows, 2, $width>($kc, $a, $b, $c, $j, $load),)*
            _ => unreachable!("check_tile bounds the rows"),
        }
    };
}
use by_rows;

/// `$name::<MR, NV, AS>`: the packed micro-kernel on vectors of `$lanes` floats, NV per row,
/// for the first MR rows of A panels AS wide (MR < AS at the bottom edge of c). Caller
/// guarantees the CPU features `$features`, `a` readable for kc·AS floats, `b` for
/// kc·$lanes·NV, `c` MR rows of at least `j` + $lanes·NV floats (the tile: columns `j..`).
macro_rules! packed_tile {
    ($name:ident, $features:literal, $lanes:literal, $zero:ident, $load:ident, $splat:ident,
     $fma:ident, $store:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const MR: usize, const NV: usize, const AS: usize>(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: &mut [&mut [f32]],
            j: usize,
            load: bool,
        ) {
            let mut acc = [[$zero(); NV]; MR];
            if load {
                for (acc, row) in acc.iter_mut().zip(c.iter()) {
                    for (v, s) in acc.iter_mut().enumerate() {
                        // SAFETY: the row holds j + $lanes·NV floats (caller).
                        *s = unsafe { $load(row.as_ptr().add(j + $lanes * v)) };
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
                    // SAFETY: p·AS + i < kc·AS floats of a (caller).
                    let ai = $splat(unsafe { *a.add(p * AS + i) });
                    for (s, &bv) in acc.iter_mut().zip(&bv) {
                        *s = $fma(ai, bv, *s);
                    }
                }
            }
            for (acc, row) in acc.iter().zip(c.iter_mut()) {
                for (v, &s) in acc.iter().enumerate() {
                    // SAFETY: as for the loads.
                    unsafe { $store(row.as_mut_ptr().add(j + $lanes * v), s) };
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

#[cfg(test)]
mod tests {
    use super::Avx2;

    /// Every live lane of every `p` is its row's value, for panels narrower and wider than
    /// eight lanes, partial groups and depths around the eight-`p` blocks, and nothing past
    /// the panel is written (the narrow panel's spill stays inside it).
    #[test]
    fn pack_rows_along_k_copies_each_row_into_its_lane_and_stays_in_the_panel() {
        let Some(avx2) = Avx2::new() else {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        };
        let data: Vec<f32> = (0..4000).map(|i| 1.0 + i as f32 * 0.25).collect();
        for w in [6, 8, 16] {
            for live in 1..=w {
                for kc in [1, 7, 8, 9, 15, 16, 17, 64, 65] {
                    let rows: Vec<usize> = (0..live).map(|i| 3 + i * 101).collect();
                    let mut dst = vec![-1.0f32; kc * w + 16];
                    avx2.pack_rows_along_k(&data, &rows, kc, w, &mut dst[..kc * w]);
                    for p in 0..kc {
                        for (i, &row) in rows.iter().enumerate() {
                            assert_eq!(dst[p * w + i], data[row + p], "w {w} live {live} kc {kc}");
                        }
                    }
                    assert!(dst[kc * w..].iter().all(|&v| v == -1.0), "w {w} kc {kc}");
                }
            }
        }
    }
}
