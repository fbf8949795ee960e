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

// ---- f16 for mixed precision (no cuda_fp16.h under nvrtc here: plain bit arithmetic, the
// same results as half::f16::from_f32 / to_f32 on the host).
// f32 -> f16 bits, round to nearest, ties to even; beyond the largest f16 (65504, plus half an
// ulp) to inf; NaN stays NaN (quiet, top payload bits kept).
__device__ __forceinline__ unsigned short f32_to_f16_bits(float f) {
    const u32 x = __float_as_uint(f);
    const u32 sign = (x >> 16) & 0x8000u;
    const u32 a = x & 0x7fffffffu;
    if (a >= 0x7f800000u)  // inf or NaN
        return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u | ((a >> 13) & 0x3ffu) : 0u));
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520: inf
    if (a >= 0x38800000u) {  // a normal f16 (>= 2^-14): drop 13 mantissa bits, ties to even
        const u32 r = a + 0xfffu + ((a >> 13) & 1u);
        return (unsigned short)(sign | ((r - 0x38000000u) >> 13));
    }
    if (a < 0x33000000u) return (unsigned short)sign;  // < 2^-25 (or exactly: a tie to 0)
    // Subnormal: units of 2^-24; the value is m * 2^(e - 126) of them.
    const u32 e = a >> 23;
    const u32 m = (a & 0x7fffffu) | 0x800000u;
    const u32 shift = 126u - e;  // 14..24
    u32 r = m >> shift;
    const u32 rem = m & ((1u << shift) - 1u);
    const u32 halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return (unsigned short)(sign | r);
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    const u32 sign = ((u32)h & 0x8000u) << 16;
    const u32 e = ((u32)h >> 10) & 0x1fu;
    const u32 m = (u32)h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0u) return __uint_as_float(sign | __float_as_uint((float)m * 5.9604644775390625e-8f));
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// ---- Element access for kernels written once over their storage type: `float` (f32) or
// `unsigned short` (f16 bits, two to a 4-byte unit, element 2i in the low half). An f16 kernel
// loads to f32, computes what the f32 kernel computes, and rounds once on store.
__device__ __forceinline__ float ld(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, u64 i) { return f16_bits_to_f32(p[i]); }
__device__ __forceinline__ void st(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, u64 i, float v) { p[i] = f32_to_f16_bits(v); }
