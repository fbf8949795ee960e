// Counter-based randomness: element i depends only on (seed, i), exactly as crate::rng's
// dropout_value_at and normal_at, so the CPU and the GPU draw the same masks and noise.
#include "common.cuh"

// keep = 1 - p and scale = 1 / (1 - p) are computed in f32 on the host, as the CPU does.
extern "C" __global__ void dropout_mask_f32(float* __restrict__ out, u64 n, u64 seed, float keep,
                                            float scale) {
    GRID_STRIDE(i, n) {
        const float u = uniform_from_bits(philox_at(seed, i).w[0]);
        out[i] = u < keep ? scale : 0.0f;
    }
}

// out = x + std * N(0, 1).
extern "C" __global__ void gaussian_noise_f32(const float* __restrict__ x,
                                              float* __restrict__ out, u64 n, u64 seed,
                                              float stddev) {
    GRID_STRIDE(i, n) {
        const Philox4 w = philox_at(seed, i);
        out[i] = __fadd_rn(x[i], __fmul_rn(stddev, normal_from_bits(w.w[0], w.w[1])));
    }
}
