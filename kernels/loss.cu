// Fused mean binary cross-entropy with logits against a constant target:
// loss = mean(max(x, 0) - x * y + log(1 + exp(-|x|))), grad = (sigmoid(x) - y) / N.
// One block computes both (the logits are one per image, so N is small); the fixed tree
// makes the loss deterministic.
#include "common.cuh"

extern "C" __global__ void bce_logits_f32(const float* __restrict__ x, u64 n, float target,
                                          float* __restrict__ loss, float* __restrict__ grad) {
    const float inv_n = 1.0f / (float)n;
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        acc += fmaxf(v, 0.0f) - v * target + log1pf(expf(-fabsf(v)));
        grad[i] = (sigmoidf_(v) - target) * inv_n;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) loss[0] = acc / (float)n;
}
