// BatchNorm2d (PyTorch semantics): biased variance to normalise, unbiased variance into
// running_var, momentum update running = (1 - m) * running + m * batch.
// Statistics: one block per channel, two passes over the channel (mean, then centred squares)
// for accuracy; fixed reduction tree, so deterministic.
#include "common.cuh"

__device__ __forceinline__ u64 bn_index(u64 i, u64 ch, u64 c, u64 hw) {
    const u64 b = i / hw, j = i - b * hw;
    return (b * c + ch) * hw + j;
}

extern "C" __global__ void bn_stats_f32(const float* __restrict__ x, u64 n, u64 c, u64 hw,
                                        float momentum, float eps, float* __restrict__ mean_out,
                                        float* __restrict__ invstd_out,
                                        float* __restrict__ running_mean,
                                        float* __restrict__ running_var) {
    const u64 count = n * hw;
    for (u64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
        float s = 0.0f;
        for (u64 i = threadIdx.x; i < count; i += blockDim.x) s += x[bn_index(i, ch, c, hw)];
        const float mean = block_sum(s) / (float)count;
        float q = 0.0f;
        for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
            const float d = x[bn_index(i, ch, c, hw)] - mean;
            q += d * d;
        }
        const float var = block_sum(q) / (float)count;
        if (threadIdx.x == 0) {
            mean_out[ch] = mean;
            invstd_out[ch] = 1.0f / sqrtf(var + eps);
            const float unbiased = count > 1 ? var * ((float)count / (float)(count - 1)) : var;
            running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * mean;
            running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * unbiased;
        }
    }
}

// y = (x - mean) * invstd * gamma + beta.
extern "C" __global__ void bn_apply_f32(const float* __restrict__ x,
                                        const float* __restrict__ mean,
                                        const float* __restrict__ invstd,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, u64 c, u64 hw,
                                        float* __restrict__ y, u64 total) {
    GRID_STRIDE(i, total) {
        const u64 ch = (i / hw) % c;
        y[i] = (x[i] - mean[ch]) * invstd[ch] * gamma[ch] + beta[ch];
    }
}

// Eval mode: normalise with the running statistics.
extern "C" __global__ void bn_eval_f32(const float* __restrict__ x,
                                       const float* __restrict__ running_mean,
                                       const float* __restrict__ running_var,
                                       const float* __restrict__ gamma,
                                       const float* __restrict__ beta, float eps, u64 c, u64 hw,
                                       float* __restrict__ y, u64 total) {
    GRID_STRIDE(i, total) {
        const u64 ch = (i / hw) % c;
        const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
        y[i] = (x[i] - running_mean[ch]) * invstd * gamma[ch] + beta[ch];
    }
}

// dbeta[c] = sum dy, dgamma[c] = sum dy * xhat; one block per channel.
extern "C" __global__ void bn_backward_reduce_f32(const float* __restrict__ x,
                                                  const float* __restrict__ dy,
                                                  const float* __restrict__ mean,
                                                  const float* __restrict__ invstd, u64 n,
                                                  u64 c, u64 hw, float* __restrict__ dgamma,
                                                  float* __restrict__ dbeta) {
    const u64 count = n * hw;
    for (u64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
        const float m = mean[ch], is = invstd[ch];
        float sdy = 0.0f, sdyx = 0.0f;
        for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
            const u64 k = bn_index(i, ch, c, hw);
            const float g = dy[k];
            sdy += g;
            sdyx += g * ((x[k] - m) * is);
        }
        sdy = block_sum(sdy);
        sdyx = block_sum(sdyx);
        if (threadIdx.x == 0) {
            dbeta[ch] = sdy;
            dgamma[ch] = sdyx;
        }
    }
}

// dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma), M = n * hw.
extern "C" __global__ void bn_backward_dx_f32(const float* __restrict__ x,
                                              const float* __restrict__ dy,
                                              const float* __restrict__ gamma,
                                              const float* __restrict__ mean,
                                              const float* __restrict__ invstd,
                                              const float* __restrict__ dgamma,
                                              const float* __restrict__ dbeta, u64 n, u64 c,
                                              u64 hw, float* __restrict__ dx) {
    const u64 total = n * c * hw;
    const float m_count = (float)(n * hw);
    GRID_STRIDE(i, total) {
        const u64 ch = (i / hw) % c;
        const float is = invstd[ch];
        const float xhat = (x[i] - mean[ch]) * is;
        dx[i] = gamma[ch] * is / m_count * (m_count * dy[i] - dbeta[ch] - xhat * dgamma[ch]);
    }
}
