// Shared device helpers for every kernel file. Compiled by nvrtc (no host headers available):
// only builtins and what is defined here.
#pragma once

typedef unsigned long long u64;
typedef unsigned int u32;

// Grid-stride loop over [0, n): correct for any launch shape, so the host may cap the grid.
#define GRID_STRIDE(i, n)                                                              \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);             \
         i += (u64)blockDim.x * gridDim.x)

// ---- Philox4x32-10, identical to crate::rng::philox4x32 (Salmon et al. 2011).
struct Philox4 {
    u32 w[4];
};

__device__ __forceinline__ Philox4 philox4x32(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        u32 n0 = hi1 ^ c1 ^ k0;
        u32 n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += W0;
        k1 += W1;
    }
    Philox4 out;
    out.w[0] = c0;
    out.w[1] = c1;
    out.w[2] = c2;
    out.w[3] = c3;
    return out;
}

// crate::rng::philox_at: counter = element index, key = seed.
__device__ __forceinline__ Philox4 philox_at(u64 seed, u64 index) {
    return philox4x32((u32)index, (u32)(index >> 32), 0u, 0u, (u32)seed, (u32)(seed >> 32));
}

// crate::rng::uniform_from_bits: [0, 1) from the top 24 bits (exact in f32).
__device__ __forceinline__ float uniform_from_bits(u32 x) {
    return __fmul_rn((float)(x >> 8), 1.0f / 16777216.0f);
}

// crate::rng::uniform_open_from_bits: (0, 1].
__device__ __forceinline__ float uniform_open_from_bits(u32 x) {
    return __fmul_rn((float)((x >> 8) + 1u), 1.0f / 16777216.0f);
}

// crate::rng::normal_from_bits (Box-Muller in f32). Explicit _rn intrinsics so that nvrtc's
// default FMA contraction cannot change the rounding relative to the CPU.
__device__ __forceinline__ float normal_from_bits(u32 a, u32 b) {
    float u1 = uniform_open_from_bits(a);
    float u2 = uniform_from_bits(b);
    float r = sqrtf(__fmul_rn(-2.0f, logf(u1)));
    return __fmul_rn(r, cosf(__fmul_rn(6.28318530717958647692f, u2)));
}

// ---- Reductions. Blocks are launched with a multiple of 32 threads (at most 1024).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block, returned to every thread. The fixed tree makes it deterministic.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float t = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
