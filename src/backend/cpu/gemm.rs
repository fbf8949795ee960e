//! f32 GEMM for the CPU backend: A and B packed into cache-sized panels (the usual MC/KC/NC
//! blocking), an AVX-512 or AVX2+FMA micro-kernel picked at run time, a portable one elsewhere
//! (and the `gemm` crate for one transpose case, see [`gemm`]).
//!
//! Every output element is one chain of fused multiply-adds along `k` in index order, started
//! from `beta·c` (the AVX kernels carry the partial sum in `c` from one KC block to the next,
//! which stores and reloads it exactly). So a result depends neither on the blocking nor on the
//! thread count nor on which AVX kernel ran: threads only split the output into blocks. The
//! portable kernel is the same chain with a separate multiply and add (a software fused
//! multiply-add would be very slow where the CPU has none), so its bits differ from the AVX
//! kernels' but, again, not with the thread count.

use rayon::prelude::*;
use std::cell::RefCell;

/// Depth of one packed block (the `k` slice): a B micro-panel of KC·NR floats stays in L1
/// while it meets every A micro-panel of the block.
const KC: usize = 256;
/// Rows of A packed at once (KC·MC floats: in L2).
const MC: usize = 128;
/// Columns of B packed at once (KC·NC floats: in L2).
const NC: usize = 512;
/// Below this many multiply-adds the work runs on the calling thread (a task split costs more).
const SERIAL_WORK: usize = 1 << 16;
/// Most rows and floats of any micro-kernel's tile.
const MAX_MR: usize = 8;
const MAX_TILE: usize = 8 * 48;

/// The micro-kernel family: `Avx512` and `Avx2` need those CPU features, `Portable` runs
/// anywhere. [`Kernel::detect`] picks the fastest; tests pick each one through [`gemm_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Avx512 => x86::Avx512::new().is_some(),
            Kernel::Avx2 => x86::Avx2::new().is_some(),
            Kernel::Portable => true,
        }
    }
}

/// `c[m, n] = a[m, k]·b[k, n] + beta·c`, row-major; `a_t`/`b_t` read a or b transposed
/// (stored as `[k, m]` / `[n, k]`). `beta` is 0 or 1. Threaded on the current rayon pool over
/// blocks of the output; results do not depend on the thread count (see the module comment).
///
/// One case differs: a plain, b transposed (the convolutions' backward-filter), where both
/// operands run along k in memory and packing both (a scalar transpose) costs more than the
/// product on its skinny, deep shapes: [`gemm_nt_with`], a blocked dot product read in place
/// with AVX (lane sums per element, then added up in lane order), else the `gemm` crate, which
/// beats the portable packed path there (benches/gemm.rs).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    beta: f32,
    c: &mut [f32],
) {
    if !a_t && b_t && m * n * k > 0 {
        return gemm_nt_with(Kernel::detect(), m, k, n, a, b, beta, c);
    }
    gemm_with(Kernel::detect(), m, k, n, a, a_t, b, b_t, beta, c)
}

/// [`gemm`]'s a·bᵀ path (`a` `[m, k]`, `b` `[n, k]`, `m·k·n > 0`) on a chosen kernel family
/// (panics if this CPU does not run it): with AVX-512 or AVX2 a blocked dot product read in
/// place, each element `L` lane sums (lane `l`: the fused chain over `p ≡ l mod L`, `L` = 16
/// or 8), added up in lane order, then added to `beta·c`; the portable one is the `gemm`
/// crate. Threads split only the output.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_with(
    kernel: Kernel,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    check_args(m, k, n, a, b, beta, c);
    let missing = "gemm: this CPU lacks the features of the chosen kernel";
    let nt = match kernel {
        Kernel::Avx512 => x86::NtKernel::Avx512(x86::Avx512::new().expect(missing)),
        Kernel::Avx2 => x86::NtKernel::Avx2(x86::Avx2::new().expect(missing)),
        Kernel::Portable => return crate_gemm(m, k, n, a, false, b, true, beta, c),
    };
    nt.run(m, k, n, a, b, beta == 1.0, c);
}

/// What every entry point requires: operands long enough, beta 0 or 1.
fn check_args(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], beta: f32, c: &[f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    assert!(beta == 0.0 || beta == 1.0, "gemm: beta must be 0 or 1");
}

/// [`gemm`] by the `gemm` crate, on the current rayon pool: the a·bᵀ fallback without
/// AVX-512, and the baseline benches/gemm.rs measures against.
#[allow(clippy::too_many_arguments)]
pub fn crate_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    beta: f32,
    c: &mut [f32],
) {
    check_args(m, k, n, a, b, beta, c);
    // (row stride, column stride) of a [m, k] and b [k, n] as stored.
    let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
    let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        ::gemm::Parallelism::Rayon(threads)
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: these strides address exactly the asserted ranges of a, b and c, and c (a unique
    // borrow) aliases neither.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta == 1.0,
            a.as_ptr(),
            csa as isize,
            rsa as isize,
            b.as_ptr(),
            csb as isize,
            rsb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// B given as `b[p, j] = data[row_start[p] + col_start[j]]`: a convolution's column matrix
/// read from its (split) input planes where the GEMM packs it, never written out (see
/// `cpu/conv.rs`). Columns whose starts follow on (`col_start[j + 1] = col_start[j] + 1`)
/// are copied as runs.
#[derive(Clone, Copy)]
pub struct Gathered<'a> {
    pub data: &'a [f32],
    pub row_start: &'a [usize],
    pub col_start: &'a [usize],
}

/// `c[m, n] = a[m, k]·b[k, n]` with b [`Gathered`] (`k` row starts, `n` column starts), `a_t`
/// as in [`gemm`], on the detected micro-kernel. The arithmetic is [`gemm_with`]'s on the same
/// b written out: the same bits.
pub fn gemm_gathered(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &Gathered,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && c.len() >= m * n);
    assert!(b.row_start.len() == k && b.col_start.len() == n);
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return c.fill(0.0);
    }
    let p = Problem {
        m,
        k,
        n,
        a: View::new(a, a_t, k, m),
        b: Operand::Gathered(*b),
        add_to_c: false,
    };
    p.run_on(Kernel::detect(), c);
}

/// [`gemm`] with a chosen micro-kernel (panics if this CPU does not run it).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    beta: f32,
    c: &mut [f32],
) {
    check_args(m, k, n, a, b, beta, c);
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        }
        return;
    }
    let p = Problem {
        m,
        k,
        n,
        // Rows of A along k.
        a: View::new(a, a_t, k, m),
        // Rows of Bᵀ (columns of B) along k.
        b: Operand::Strided(View::new(b, !b_t, k, n)),
        add_to_c: beta == 1.0,
    };
    p.run_on(kernel, c);
}

/// `c[i][j..j + NR] = (load ? c[i][j..j + NR] : 0) + Σ_p a[p·MR + i]·b[p·NR + ..]` for the
/// rows of `c` (`MR`, or fewer at the bottom edge of the output), `p` in order, one
/// multiply-add per `p`. The rows are a band of the block's output rows, `j` the tile's first
/// column in them (rows passed as they are: slicing each row per tile cost more than the
/// bookkeeping it saved).
trait MicroKernel: Copy + Send + Sync {
    const MR: usize;
    const NR: usize;
    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], j: usize, load: bool);
}

/// The bounds every micro-kernel call must meet (the AVX kernels' raw accesses rely on them).
fn check_tile(kc: usize, mr: usize, nr: usize, a: &[f32], b: &[f32], c: &[&mut [f32]], j: usize) {
    assert!(a.len() >= kc * mr && b.len() >= kc * nr);
    assert!((1..=mr).contains(&c.len()) && c.iter().all(|row| row.len() >= j + nr));
}

struct Problem<'a> {
    m: usize,
    k: usize,
    n: usize,
    a: View<'a>,
    b: Operand<'a>,
    add_to_c: bool,
}

impl Problem<'_> {
    /// [`Problem::run`] on `kernel`'s micro-kernel (panics if this CPU does not run it).
    fn run_on(&self, kernel: Kernel, c: &mut [f32]) {
        let missing = "gemm: this CPU lacks the features of the chosen kernel";
        match kernel {
            Kernel::Avx512 => self.run(x86::Avx512::new().expect(missing), c),
            Kernel::Avx2 => self.run(x86::Avx2::new().expect(missing), c),
            Kernel::Portable => self.run(Portable, c),
        }
    }

    fn run<K: MicroKernel>(&self, kern: K, c: &mut [f32]) {
        let work = self.m * self.n * self.k;
        let (mc, nc) = blocks(self.m, self.n, work, (MC, NC), (K::MR, K::NR));
        for_each_block(c, self.n, mc, nc, |i0, j0, rows| {
            self.block(kern, i0, j0, rows)
        });
    }

    /// `c[i0.., j0..]` for the block whose rows are `rows`, over all of `k`, KC at a time.
    fn block<K: MicroKernel>(&self, kern: K, i0: usize, j0: usize, rows: &mut [&mut [f32]]) {
        let (mc, nc) = (rows.len(), rows[0].len());
        let kc_max = KC.min(self.k);
        let a_len = mc.div_ceil(K::MR) * K::MR * kc_max;
        let b_len = nc.div_ceil(K::NR) * K::NR * kc_max;
        with_pack_buffers(a_len, b_len, |ap, bp| {
            for p0 in (0..self.k).step_by(KC) {
                let kc = KC.min(self.k - p0);
                self.a.pack(i0, mc, p0, kc, K::MR, ap);
                self.b.pack(j0, nc, p0, kc, K::NR, bp);
                let load = self.add_to_c || p0 > 0;
                let b_panels = bp.chunks_exact(kc * K::NR).take(nc.div_ceil(K::NR));
                for (jp, b_panel) in b_panels.enumerate() {
                    let a_panels = ap.chunks_exact(kc * K::MR);
                    for (a_panel, tile_rows) in a_panels.zip(rows.chunks_mut(K::MR)) {
                        tile(kern, kc, a_panel, b_panel, tile_rows, jp * K::NR, load);
                    }
                }
            }
        });
    }
}

/// Block sizes for an `m × n` output: at most `max`, multiples of `tile`, halved (along the
/// larger side) until there are about four blocks per thread, so two cores share skinny
/// products too. Any sizes give the same bits, so this may follow the thread count.
fn blocks(
    m: usize,
    n: usize,
    work: usize,
    max: (usize, usize),
    tile: (usize, usize),
) -> (usize, usize) {
    let ((mr, nr), round) = (tile, |x: usize, to: usize| x.div_ceil(to) * to);
    let (mut mc, mut nc) = (round(m.min(max.0), mr), round(n.min(max.1), nr));
    let want = if work < SERIAL_WORK {
        1
    } else {
        4 * rayon::current_num_threads()
    };
    while m.div_ceil(mc) * n.div_ceil(nc) < want {
        if nc / nr >= mc / mr && nc > nr {
            nc = round(nc / 2, nr);
        } else if mc > mr {
            mc = round(mc / 2, mr);
        } else {
            break;
        }
    }
    (mc, nc)
}

/// Runs `f(i0, j0, rows)` for every `mc × nc` block of the row-major `c` (row length `n`),
/// in parallel; `rows` are the block's pieces of its rows, so blocks never share memory.
fn for_each_block(
    c: &mut [f32],
    n: usize,
    mc: usize,
    nc: usize,
    f: impl Fn(usize, usize, &mut [&mut [f32]]) + Sync,
) {
    let mut tasks = Vec::new();
    for (band_index, band) in c.chunks_mut(mc * n).enumerate() {
        let mut blocks: Vec<Vec<&mut [f32]>> = Vec::new();
        blocks.resize_with(n.div_ceil(nc), || Vec::with_capacity(mc));
        for row in band.chunks_mut(n) {
            for (block, piece) in blocks.iter_mut().zip(row.chunks_mut(nc)) {
                block.push(piece);
            }
        }
        for (q, rows) in blocks.into_iter().enumerate() {
            tasks.push((band_index * mc, q * nc, rows));
        }
    }
    if tasks.len() == 1 {
        let (i0, j0, mut rows) = tasks.pop().unwrap();
        f(i0, j0, &mut rows);
    } else {
        tasks
            .into_par_iter()
            .for_each(|(i0, j0, mut rows)| f(i0, j0, &mut rows));
    }
}

/// One micro-kernel call on `rows[..][j..j + NR]` (fewer than MR rows at the bottom edge); a
/// tile cut by the right edge goes through a full-size buffer (the packed panels are
/// zero-padded, so the extra lanes compute harmless zeros).
fn tile<K: MicroKernel>(
    kern: K,
    kc: usize,
    a: &[f32],
    b: &[f32],
    rows: &mut [&mut [f32]],
    j: usize,
    load: bool,
) {
    let nr = K::NR.min(rows[0].len() - j);
    if nr == K::NR {
        return kern.tile(kc, a, b, rows, j, load);
    }
    let mut views: [&mut [f32]; MAX_MR] = Default::default();
    let mut buf = [0.0f32; MAX_TILE];
    let buf = &mut buf[..K::MR * K::NR];
    if load {
        for (d, row) in buf.chunks_exact_mut(K::NR).zip(rows.iter()) {
            d[..nr].copy_from_slice(&row[j..j + nr]);
        }
    }
    for (v, d) in views.iter_mut().zip(buf.chunks_exact_mut(K::NR)) {
        *v = d;
    }
    kern.tile(kc, a, b, &mut views[..K::MR], 0, load);
    for (d, row) in buf.chunks_exact(K::NR).zip(rows.iter_mut()) {
        row[j..j + nr].copy_from_slice(&d[..nr]);
    }
}

thread_local! {
    /// Packed A and B blocks of this thread, reused from call to call.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's two pack buffers of the given lengths, each starting on a
/// 64-byte boundary (whole cache lines per micro-panel row; only speed depends on it).
fn with_pack_buffers<R>(
    a_len: usize,
    b_len: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    const LINE: usize = 16;
    let split = |buf: &mut Vec<f32>| {
        let need = a_len.next_multiple_of(LINE) + b_len + LINE;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let start = buf.as_ptr().align_offset(64).min(LINE - 1);
        let (a, b) = buf[start..].split_at_mut(a_len.next_multiple_of(LINE));
        f(&mut a[..a_len], &mut b[..b_len])
    };
    PACK.with(|p| match p.try_borrow_mut() {
        Ok(mut buf) => split(&mut buf),
        // Re-entered (cannot happen today: a block makes no rayon call): a fresh buffer.
        Err(_) => split(&mut Vec::new()),
    })
}

/// Plain Rust, 8 × 8: vectorised by the compiler for the target's baseline SIMD.
#[derive(Clone, Copy)]
struct Portable;

impl MicroKernel for Portable {
    const MR: usize = 8;
    const NR: usize = 8;

    fn tile(self, kc: usize, a: &[f32], b: &[f32], c: &mut [&mut [f32]], j: usize, load: bool) {
        check_tile(kc, Self::MR, Self::NR, a, b, c, j);
        let mut acc = [[0.0f32; 8]; 8];
        if load {
            for (acc, row) in acc.iter_mut().zip(c.iter()) {
                acc.copy_from_slice(&row[j..j + 8]);
            }
        }
        for (ap, bp) in a.chunks_exact(8).zip(b.chunks_exact(8)).take(kc) {
            for (acc, &ai) in acc.iter_mut().zip(ap) {
                for (s, &bj) in acc.iter_mut().zip(bp) {
                    *s += ai * bj;
                }
            }
        }
        for (acc, row) in acc.iter().zip(c.iter_mut()) {
            row[j..j + 8].copy_from_slice(acc);
        }
    }
}

/// The AVX micro-kernels (x86_64), or stand-ins that never exist elsewhere.
mod pack;
use pack::{Operand, View};

#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(not(target_arch = "x86_64"))]
#[path = "gemm/no_x86.rs"]
mod x86;
