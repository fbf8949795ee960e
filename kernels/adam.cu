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
    u32 scalar[ADAM_MAX_ITEMS];  // index in `scalars` of lr / (1 - beta1^t), per item
    u32 n_items;
};

// PyTorch's (non-amsgrad) formula:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// scalars[0] = sqrt(bc2); scalars[t.scalar[k]] = lr / bc1 of item k.
extern "C" __global__ void adam_multi_f32(const AdamTable t, u32 chunk, float beta1,
                                          float beta2, float eps, const float* scalars) {
    const u32 b = blockIdx.x;
    u32 k = 0;
    while (k + 1 < t.n_items && t.block_start[k + 1] <= b) ++k;
    float* p = (float*)t.param[k];
    const float* g = (const float*)t.grad[k];
    float* m = (float*)t.m[k];
    float* v = (float*)t.v[k];
    const u64 len = t.len[k];
    const float step = scalars[t.scalar[k]];
    const float bc2_sqrt = scalars[0];
    const u64 start = (u64)(b - t.block_start[k]) * chunk;
    u64 end = start + chunk;
    if (end > len) end = len;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = g[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}
