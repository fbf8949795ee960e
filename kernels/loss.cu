// The GAN losses on D's logits and the L1/MSE distance, each fused (loss and gradient in one
// kernel).
//
// Mean binary cross-entropy with logits against a constant target:
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

// Mean hinge loss (Lim & Ye 2017, as SAGAN and FastGAN use it) of logits x for one term:
// clamped: loss = mean(max(0, 1 - sign * x)) (D on real images: sign +1; on fakes: sign -1),
//          grad = -sign / N where 1 - sign * x > 0, else 0;
// linear:  loss = mean(-sign * x) (G: sign +1), grad = -sign / N.
extern "C" __global__ void hinge_logits_f32(const float* __restrict__ x, u64 n, float sign,
                                            int clamped, float* __restrict__ loss,
                                            float* __restrict__ grad) {
    const float inv_n = 1.0f / (float)n;
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
        const float margin = 1.0f - sign * x[i];
        const bool active = !clamped || margin > 0.0f;
        acc += clamped ? fmaxf(margin, 0.0f) : -sign * x[i];
        grad[i] = active ? -sign * inv_n : 0.0f;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) loss[0] = acc / (float)n;
}

// Mean distance between a and b (kind 0: L1, |a - b|; kind 1: MSE, (a - b)^2), fused:
// grad (d loss / d a) = sign(a - b) / N (sign(0) = 0, as PyTorch) or 2 (a - b) / N. One block
// with the fixed tree (deterministic), like the logit losses.
extern "C" __global__ void pair_loss_f32(const float* __restrict__ a, const float* __restrict__ b,
                                         u64 n, int kind, float* __restrict__ loss,
                                         float* __restrict__ grad) {
    const float inv_n = 1.0f / (float)n;
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = a[i] - b[i];
        if (kind == 0) {
            acc += fabsf(d);
            grad[i] = d > 0.0f ? inv_n : (d < 0.0f ? -inv_n : 0.0f);
        } else {
            acc += __fmul_rn(d, d);
            grad[i] = __fmul_rn(2.0f * d, inv_n);
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) loss[0] = acc / (float)n;
}
