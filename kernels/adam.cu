// Fused multi-tensor Adam: one launch updates up to ADAM_MAX_ITEMS parameter tensors. The
// table of pointers and lengths travels by value as the kernel parameter (under the 4 KiB
// limit); the scalars that change every step (bias corrections, lr per item) are read from
// device memory, so that a CUDA graph of the step replays with each step's values.
// Block b works on item k where block_start[k] <= b < block_start[k + 1].
#include "common.cuh"

#define ADAM_MAX_ITEMS 64

// Must match `AdamTable` in src/backend/cuda/mod.rs (repr(C)).
struct AdamTable {
    u64 param[ADAM_MAX_ITEMS];
    u64 grad[ADAM_MAX_ITEMS];
    u64 m[ADAM_MAX_ITEMS];
    u64 v[ADAM_MAX_ITEMS];
    u32 len[ADAM_MAX_ITEMS];
    u32 block_start[ADAM_MAX_ITEMS + 1];
    u32 scalar[ADAM_MAX_ITEMS];  // index of the item's value in `scalars` (see the kernels)
    u32 n_items;
};

// The item block b works on (block_start[k] <= b < block_start[k + 1]).
__device__ __forceinline__ u32 item_of_block(const AdamTable& t, u32 b) {
    u32 k = 0;
    while (k + 1 < t.n_items && t.block_start[k + 1] <= b) ++k;
    return k;
}

// Block b's chunk of item k, PyTorch's (non-amsgrad) formula on g = grad * inv_scale:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// `step` = lr / bc1. inv_scale is 1 for the f32 path (an exact multiply).
__device__ __forceinline__ void adam_chunk(const AdamTable& t, u32 b, u32 k, u32 chunk,
                                           float beta1, float beta2, float eps, float step,
                                           float bc2_sqrt, float inv_scale) {
    float* p = (float*)t.param[k];
    const float* g = (const float*)t.grad[k];
    float* m = (float*)t.m[k];
    float* v = (float*)t.v[k];
    const u64 len = t.len[k];
    const u64 start = (u64)(b - t.block_start[k]) * chunk;
    u64 end = start + chunk;
    if (end > len) end = len;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = g[i] * inv_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

// scalars[0] = sqrt(bc2); scalars[t.scalar[k]] = lr / bc1 of item k.
extern "C" __global__ void adam_multi_f32(const AdamTable t, u32 chunk, float beta1,
                                          float beta2, float eps, const float* scalars) {
    const u32 k = item_of_block(t, blockIdx.x);
    adam_chunk(t, blockIdx.x, k, chunk, beta1, beta2, eps, scalars[t.scalar[k]], scalars[0],
               1.0f);
}

// ---- Mixed precision (Backend::adam_update_scaled): three launches per optimiser step, no host
// read. `counters` has the layout of crate::backend::loss_scale: [growth tracker, found inf,
// skipped, applied]; `scale` is one float. The reference is src/backend/reference/adam.rs.
#define LS_GROWTH_TRACKER 0
#define LS_FOUND_INF 1
#define LS_SKIPPED 2
#define LS_APPLIED 3

__device__ __forceinline__ bool not_finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
}

// 1/scale as PyTorch computes it (in double, then float).
__device__ __forceinline__ float inverse_scale(const float* scale) {
    return (float)(1.0 / (double)scale[0]);
}

// Sets counters[FOUND_INF] to 1 when any gradient of the table, unscaled, is inf or NaN. Every
// writer writes the same value, so the race is benign; the update below clears the flag.
extern "C" __global__ void amp_find_inf_multi(const AdamTable t, u32 chunk, const float* scale,
                                              float* counters) {
    const u32 b = blockIdx.x;
    const u32 k = item_of_block(t, b);
    const float* g = (const float*)t.grad[k];
    const u64 len = t.len[k];
    const float inv = inverse_scale(scale);
    const u64 start = (u64)(b - t.block_start[k]) * chunk;
    u64 end = start + chunk;
    if (end > len) end = len;
    bool bad = false;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) bad |= not_finite(g[i] * inv);
    if (bad) counters[LS_FOUND_INF] = 1.0f;
}

// adam_multi_f32 on g/scale, with the bias corrections of step APPLIED + 1 (1 - beta^t in
// double, as the host computes them for the f32 path), and nothing at all when the step found
// an inf/NaN. scalars[t.scalar[k]] = the lr of item k (scalars[0] is unused).
extern "C" __global__ void adam_multi_scaled_f32(const AdamTable t, u32 chunk, float beta1,
                                                 float beta2, float eps, const float* scalars,
                                                 const float* scale, const float* counters) {
    if (counters[LS_FOUND_INF] != 0.0f) return;
    const u32 k = item_of_block(t, blockIdx.x);
    const double step_t = (double)counters[LS_APPLIED] + 1.0;
    const float bc1 = (float)(1.0 - pow((double)beta1, step_t));
    const float bc2_sqrt = sqrtf((float)(1.0 - pow((double)beta2, step_t)));
    adam_chunk(t, blockIdx.x, k, chunk, beta1, beta2, eps, scalars[t.scalar[k]] / bc1, bc2_sqrt,
               inverse_scale(scale));
}

// PyTorch's _amp_update_scale_ (x0.5 on inf/NaN, x2 after growth_interval clean steps, if the
// result is finite) plus the skipped/applied counts; clears the found-inf flag. One thread.
extern "C" __global__ void amp_update_scale(float* scale, float* counters, u32 growth_interval) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (counters[LS_FOUND_INF] != 0.0f) {
        scale[0] = scale[0] * 0.5f;
        counters[LS_GROWTH_TRACKER] = 0.0f;
        counters[LS_SKIPPED] += 1.0f;
    } else {
        counters[LS_APPLIED] += 1.0f;
        const float clean = counters[LS_GROWTH_TRACKER] + 1.0f;
        if (clean == (float)growth_interval) {
            const float grown = scale[0] * 2.0f;
            if (!not_finite(grown)) scale[0] = grown;
            counters[LS_GROWTH_TRACKER] = 0.0f;
        } else {
            counters[LS_GROWTH_TRACKER] = clean;
        }
    }
    counters[LS_FOUND_INF] = 0.0f;
}
