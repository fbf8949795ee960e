//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
//!
//! One generator serves the host (weight init, latents, shuffling) and the device ops
//! (dropout masks, Gaussian noise): element `i` of a device draw depends only on the seed and
//! `i`, so the CPU reference and a CUDA kernel produce the same numbers whatever the launch
//! shape. Pure integer arithmetic, so the stream is identical on every machine.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds. `kernels/common.cuh` holds the same function for the GPU.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
    }
    c
}

/// Splits a 64-bit seed into a Philox key.
pub fn seed_key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The four words for element `index` of a device-style draw with `seed`.
pub fn philox_at(seed: u64, index: u64) -> [u32; 4] {
    philox4x32([index as u32, (index >> 32) as u32, 0, 0], seed_key(seed))
}

/// Uniform in [0, 1) from the top 24 bits (exactly representable in f32).
pub fn uniform_from_bits(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform in (0, 1]: safe for `ln`.
pub fn uniform_open_from_bits(x: u32) -> f32 {
    ((x >> 8) + 1) as f32 * (1.0 / 16_777_216.0)
}

/// Box-Muller on two words, evaluated in f32 the way the CUDA kernels do (`logf`, `cosf`):
/// the two backends agree to a few ulp.
pub fn normal_from_bits(a: u32, b: u32) -> f32 {
    let u1 = uniform_open_from_bits(a);
    let u2 = uniform_from_bits(b);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Keep-mask value of element `index` for dropout with drop probability `p`:
/// `1/(1-p)` where kept, `0` where dropped (inverted dropout, as PyTorch).
pub fn dropout_value_at(seed: u64, index: u64, p: f32) -> f32 {
    let u = uniform_from_bits(philox_at(seed, index)[0]);
    if u < 1.0 - p {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// Standard normal sample of element `index` of a device-style draw.
pub fn normal_at(seed: u64, index: u64) -> f32 {
    let w = philox_at(seed, index);
    normal_from_bits(w[0], w[1])
}

/// A sequential host generator over the Philox stream. Its state is two numbers (seed and
/// position), so it can be saved in a checkpoint and restored exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    seed: u64,
    /// Number of 32-bit words drawn so far.
    position: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { seed, position: 0 }
    }

    /// Restores a generator saved with [`Rng::state`].
    pub fn from_state(seed: u64, position: u64) -> Self {
        Rng { seed, position }
    }

    pub fn state(&self) -> (u64, u64) {
        (self.seed, self.position)
    }

    /// An independent generator for a named purpose (e.g. "init", "noise"), so that adding
    /// draws to one stream never shifts another.
    pub fn derive(seed: u64, stream: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
        for b in stream.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let w = philox4x32([h as u32, (h >> 32) as u32, 0x5eed, 0], seed_key(seed));
        Rng::new(u64::from(w[0]) | (u64::from(w[1]) << 32))
    }

    pub fn next_u32(&mut self) -> u32 {
        let block = self.position / 4;
        let lane = (self.position % 4) as usize;
        self.position += 1;
        let w = philox4x32(
            [block as u32, (block >> 32) as u32, 0, 0x686f_7374],
            seed_key(self.seed),
        );
        w[lane]
    }

    pub fn next_u64(&mut self) -> u64 {
        u64::from(self.next_u32()) | (u64::from(self.next_u32()) << 32)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        uniform_from_bits(self.next_u32())
    }

    /// Standard normal (Box-Muller, computed in f64 and rounded so that it does not depend on
    /// the platform's single-precision libm).
    pub fn normal(&mut self) -> f32 {
        let u1 = f64::from((self.next_u32() >> 8) + 1) / 16_777_216.0;
        let u2 = f64::from(self.next_u32() >> 8) / 16_777_216.0;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn normal_vec(&mut self, len: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..len).map(|_| mean + std * self.normal()).collect()
    }

    pub fn uniform_vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| lo + (hi - lo) * self.uniform()).collect()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answer() {
        // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn rng_is_reproducible_and_restorable() {
        let mut a = Rng::new(7);
        let first: Vec<u32> = (0..10).map(|_| a.next_u32()).collect();
        let (s, p) = a.state();
        let next = a.next_u32();
        let mut b = Rng::new(7);
        let again: Vec<u32> = (0..10).map(|_| b.next_u32()).collect();
        assert_eq!(first, again);
        assert_eq!(Rng::from_state(s, p).next_u32(), next);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(3);
        let xs = r.normal_vec(200_000, 0.0, 1.0);
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        let var = xs
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn dropout_keeps_about_one_minus_p() {
        let p = 0.3;
        let kept = (0..100_000u64)
            .filter(|&i| dropout_value_at(11, i, p) > 0.0)
            .count();
        assert!((kept as f64 / 100_000.0 - 0.7).abs() < 0.01);
    }
}
