//! Elsewhere the AVX kernels never exist: their constructors say so.

use super::MicroKernel;

#[derive(Clone, Copy)]
pub enum Avx512 {}
#[derive(Clone, Copy)]
pub enum Avx2 {}

impl Avx512 {
    pub fn new() -> Option<Self> {
        None
    }

    pub fn gather_rows(self, _: &[f32], _: &[usize], _: &[usize], _: usize, _: &mut [f32]) {
        match self {}
    }
}

impl Avx2 {
    pub fn new() -> Option<Self> {
        None
    }

    pub fn gather_along_k(self, _: &[f32], _: &[usize], _: &[usize], _: usize, _: &mut [f32]) {
        match self {}
    }

    pub fn pack_rows_along_k(self, _: &[f32], _: &[usize], _: usize, _: usize, _: &mut [f32]) {
        match self {}
    }
}

#[derive(Clone, Copy)]
pub enum NtKernel {
    Avx512(Avx512),
    Avx2(Avx2),
}

impl NtKernel {
    #[allow(clippy::too_many_arguments)]
    pub fn run(self, _: usize, _: usize, _: usize, _: &[f32], _: &[f32], _: bool, _: &mut [f32]) {
        match self {
            NtKernel::Avx512(never) => match never {},
            NtKernel::Avx2(never) => match never {},
        }
    }
}

impl MicroKernel for Avx512 {
    const MR: usize = 8;
    const NR: usize = 8;
    fn tile(self, _: usize, _: &[f32], _: &[f32], _: &mut [&mut [f32]], _: usize, _: bool) {
        match self {}
    }
}

impl MicroKernel for Avx2 {
    const MR: usize = 8;
    const NR: usize = 8;
    fn tile(self, _: usize, _: &[f32], _: &[f32], _: &mut [&mut [f32]], _: usize, _: bool) {
        match self {}
    }
}
