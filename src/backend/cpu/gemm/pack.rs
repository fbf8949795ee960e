//! Packing of GEMM operands into the micro-kernels' panels: strided matrices ([`View`]) and
//! gathered column matrices ([`super::Gathered`], read as runs).

use super::{x86, Gathered};
use crate::backend::cpu::copy_short;

/// A matrix read as rows along `k`: element `(r, p)` is `data[r·rs + p·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `transposed`: stored as `[k, rows]` instead of `[rows, k]`.
    pub(super) fn new(data: &'a [f32], transposed: bool, k: usize, rows: usize) -> Self {
        let (rs, cs) = if transposed { (1, rows) } else { (k, 1) };
        View { data, rs, cs }
    }

    /// Copies rows `r0..r0 + rows`, depth `p0..p0 + kc` into micro-panels of `w` rows: panel
    /// `s` holds, for each `p`, the `w` values of rows `r0 + s·w ..` (zeros past the last row).
    pub(super) fn pack(
        &self,
        r0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        w: usize,
        dst: &mut [f32],
    ) {
        let panels = dst.chunks_exact_mut(kc * w).take(rows.div_ceil(w));
        for (s, panel) in panels.enumerate() {
            let first = r0 + s * w;
            let live = w.min(rows - s * w);
            if self.cs == 1 {
                // Each row is contiguous along k: scatter it into its lane of the panel (with
                // AVX2 eight rows at a time, transposed in registers).
                if let Some(avx2) = x86::Avx2::new() {
                    let mut rows = [0; MAX_NR];
                    for (i, r) in rows[..live].iter_mut().enumerate() {
                        *r = (first + i) * self.rs + p0;
                    }
                    avx2.pack_rows_along_k(self.data, &rows[..live], kc, w, panel);
                } else {
                    for i in 0..live {
                        let row = &self.data[(first + i) * self.rs + p0..][..kc];
                        for (d, &v) in panel.chunks_exact_mut(w).zip(row) {
                            d[i] = v;
                        }
                    }
                }
            } else {
                // The rows of one k are contiguous: copy them in one piece.
                for (p, d) in panel.chunks_exact_mut(w).enumerate() {
                    copy_short(
                        &mut d[..live],
                        &self.data[(p0 + p) * self.cs + first..][..live],
                    );
                }
            }
            if live < w {
                for d in panel.chunks_exact_mut(w) {
                    d[live..].fill(0.0);
                }
            }
        }
    }
}

/// The B operand: a strided matrix, or a [`Gathered`] column matrix.
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    Strided(View<'a>),
    Gathered(Gathered<'a>),
}

impl Operand<'_> {
    /// [`View::pack`]'s panels of columns `r0..r0 + rows` of B, depth `p0..p0 + kc`.
    pub(super) fn pack(
        &self,
        r0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        w: usize,
        dst: &mut [f32],
    ) {
        let g = match self {
            Operand::Strided(view) => return view.pack(r0, rows, p0, kc, w, dst),
            Operand::Gathered(g) => g,
        };
        let panels = dst.chunks_exact_mut(kc * w).take(rows.div_ceil(w));
        for (s, panel) in panels.enumerate() {
            let first = r0 + s * w;
            let live = w.min(rows - s * w);
            let runs = Runs::of(&g.col_start[first..first + live]);
            let row_starts = &g.row_start[p0..p0 + kc];
            match runs.equal_len {
                Some(4) => runs.copy::<4>(g.data, row_starts, w, panel),
                Some(8) => runs.copy::<8>(g.data, row_starts, w, panel),
                Some(16) => runs.copy::<16>(g.data, row_starts, w, panel),
                Some(32) => runs.copy::<32>(g.data, row_starts, w, panel),
                // Scattered columns (a backward-filter's taps): AVX-512 gathers, or with AVX2
                // eight columns read along their runs of consecutive rows and transposed
                // (those layers' backward-filter 1.1-1.2x faster than with the scalar loop,
                // benches/cpu_conv on Zen 3), else element by element.
                _ if runs.count * 2 > live => {
                    let col_start = &g.col_start[first..first + live];
                    if let Some(avx512) = x86::Avx512::new() {
                        avx512.gather_rows(g.data, row_starts, col_start, w, panel);
                    } else if let Some(avx2) = x86::Avx2::new() {
                        avx2.gather_along_k(g.data, row_starts, col_start, w, panel);
                    } else {
                        for (&row, d) in row_starts.iter().zip(panel.chunks_exact_mut(w)) {
                            let data = &g.data[row..];
                            for (d, &col) in d.iter_mut().zip(col_start) {
                                *d = data[col];
                            }
                        }
                    }
                }
                _ => {
                    for (&row, d) in row_starts.iter().zip(panel.chunks_exact_mut(w)) {
                        for &(src, dst, len) in runs.runs() {
                            copy_short(&mut d[dst..dst + len], &g.data[row + src..][..len]);
                        }
                    }
                }
            }
            if live < w {
                for d in panel.chunks_exact_mut(w) {
                    d[live..].fill(0.0);
                }
            }
        }
    }
}

/// Most columns of a packed panel (every micro-kernel's NR).
const MAX_NR: usize = 64;

/// One panel's columns of a [`Gathered`] B as runs `(start, position in the panel, length)`.
struct Runs {
    runs: [(usize, usize, usize); MAX_NR],
    count: usize,
    /// The runs' common length, if they all have one.
    equal_len: Option<usize>,
}

impl Runs {
    fn of(col_start: &[usize]) -> Runs {
        let mut r = Runs {
            runs: [(0, 0, 0); MAX_NR],
            count: 0,
            equal_len: None,
        };
        for (i, &start) in col_start.iter().enumerate() {
            match r.count.checked_sub(1).map(|last| &mut r.runs[last]) {
                Some(run) if run.0 + run.2 == start => run.2 += 1,
                _ => {
                    r.runs[r.count] = (start, i, 1);
                    r.count += 1;
                }
            }
        }
        let len = r.runs[0].2;
        r.equal_len = r.runs().iter().all(|run| run.2 == len).then_some(len);
        r
    }

    fn runs(&self) -> &[(usize, usize, usize)] {
        &self.runs[..self.count]
    }

    /// The panel's rows (`w` floats each, one per row start) for runs all `L` long: fixed-size
    /// copies the compiler turns into a few vector moves (a `memcpy` call per run cost more
    /// than the copy on the 4-16 pixel rows of GAN layers).
    fn copy<const L: usize>(
        &self,
        data: &[f32],
        row_starts: &[usize],
        w: usize,
        panel: &mut [f32],
    ) {
        for (&row, d) in row_starts.iter().zip(panel.chunks_exact_mut(w)) {
            for &(src, dst, _) in self.runs() {
                let src: &[f32; L] = data[row + src..][..L].try_into().expect("L floats");
                d[dst..dst + L].copy_from_slice(src);
            }
        }
    }
}
