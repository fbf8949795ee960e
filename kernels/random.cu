// Counter-based randomness: element i depends only on (seed, first + i), exactly as crate::rng's
// dropout_value_at and normal_at, so the CPU and the GPU draw the same masks and noise. `first`:
// the index of the tensor's first element in the whole batch's (a part on one GPU of several).
#include "common.cuh"

// keep = 1 - p and scale = 1 / (1 - p) are computed in f32 on the host, as the CPU does.
extern "C" __global__ void dropout_mask_f32(float* __restrict__ out, u64 n, u64 seed, u64 first,
                                            float keep, float scale) {
    GRID_STRIDE(i, n) {
        const float u = uniform_from_bits(philox_at(seed, first + i).w[0]);
        out[i] = u < keep ? scale : 0.0f;
    }
}

// out = x + std * N(0, 1).
extern "C" __global__ void gaussian_noise_f32(const float* __restrict__ x,
                                              float* __restrict__ out, u64 n, u64 seed,
                                              u64 first, float stddev) {
    GRID_STRIDE(i, n) {
        const Philox4 w = philox_at(seed, first + i);
        out[i] = __fadd_rn(x[i], __fmul_rn(stddev, normal_from_bits(w.w[0], w.w[1])));
    }
}

// The forms a CUDA graph replays: the seed (and the noise std) read from `v`, written before
// each step as crate::backend::seed_values lays them out: seed low and high 32 bits, std.
__device__ __forceinline__ u64 seed_from(const float* __restrict__ v) {
    const unsigned int* w = reinterpret_cast<const unsigned int*>(v);
    return (u64)w[0] | ((u64)w[1] << 32);
}

extern "C" __global__ void dropout_mask_by_f32(float* __restrict__ out, u64 n,
                                               const float* __restrict__ v, u64 first, float keep,
                                               float scale) {
    const u64 seed = seed_from(v);
    GRID_STRIDE(i, n) {
        const float u = uniform_from_bits(philox_at(seed, first + i).w[0]);
        out[i] = u < keep ? scale : 0.0f;
    }
}

extern "C" __global__ void gaussian_noise_by_f32(const float* __restrict__ x,
                                                 float* __restrict__ out, u64 n,
                                                 const float* __restrict__ v, u64 first) {
    const u64 seed = seed_from(v);
    const float stddev = v[2];
    GRID_STRIDE(i, n) {
        const Philox4 w = philox_at(seed, first + i);
        out[i] = __fadd_rn(x[i], __fmul_rn(stddev, normal_from_bits(w.w[0], w.w[1])));
    }
}
