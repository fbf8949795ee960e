// BatchNorm2d (PyTorch semantics): biased variance to normalise, unbiased variance into
// running_var, momentum update running = (1 - m) * running + m * batch. Optionally fused with the
// ReLU or LeakyReLU that follows it (`act`): the forward writes only the activated output and
// the backward recomputes the pre-activation from x for the activation's mask, so the
// pre-activation tensor is never stored.
//
// Index arithmetic is 32-bit (the host refuses tensors of 2^31 elements or more) and the
// per-channel reductions walk their elements with additions only.
//
// Each kernel body is written once, over the storage type T of the activations (x, y, dy, dx):
// the `_f32` kernels take float, the `_f16` ones f16 bits (amp's activations: loaded to f32,
// the same f32 arithmetic, rounded once on store). Statistics and parameters are f32 in both.
#include "common.cuh"

// Activation codes shared with src/backend/cuda/batchnorm.rs (`act_code`).
#define BN_ACT_NONE 0
#define BN_ACT_RELU 1
#define BN_ACT_LEAKY 2

// z = (x - mean) * scale + shift with every step rounded as written (no FMA contraction): the
// CPU computes the same, and the backward recomputes exactly the forward's z.
__device__ __forceinline__ float bn_affine(float x, float mean, float scale, float shift) {
    return __fadd_rn(__fmul_rn(__fsub_rn(x, mean), scale), shift);
}

__device__ __forceinline__ float bn_act(int act, float slope, float z) {
    if (act == BN_ACT_NONE || z > 0.0f) return z;
    return act == BN_ACT_RELU ? 0.0f : __fmul_rn(z, slope);
}

// d act(z) / dz times g (0 or slope where z <= 0, as the unfused activation's backward).
__device__ __forceinline__ float bn_act_grad(int act, float slope, float z, float g) {
    if (act == BN_ACT_NONE || z > 0.0f) return g;
    return act == BN_ACT_RELU ? 0.0f : __fmul_rn(g, slope);
}

// Channel of flat NCHW index i.
__device__ __forceinline__ u32 bn_channel(u32 i, u32 c, u32 hw) {
    const u32 row = i / hw;
    return row - (row / c) * c;
}

// ---- Per-channel reductions. A block is (tx, ty): ty channels side by side, tx threads (a
// multiple of 32) per channel; blocks stride over groups of ty channels. Thread t of a channel
// sums its elements t, t + tx, t + 2tx, ... (image-major) in that order, then the tx partial
// sums are added by a fixed tree: results depend on tx (chosen by the host from the channel's
// size) but not on the grid.

// Position of a thread in its channel's elements; advanced with additions only.
struct ChannelWalk {
    u32 off;   // flat index of the current element
    u32 j;     // its pixel within the image
    u32 hw;
    u32 dj;    // tx % hw
    u32 doff;  // (tx / hw) * c * hw + tx % hw
    u32 wrap;  // c * hw - hw: from pixel hw to pixel 0 of the next image
};

__device__ __forceinline__ ChannelWalk walk_start(u32 ch, u32 t, u32 tx, u32 c, u32 hw) {
    ChannelWalk w;
    const u32 chw = c * hw;
    const u32 b = t / hw;
    w.j = t - b * hw;
    w.off = b * chw + ch * hw + w.j;
    w.hw = hw;
    w.dj = tx - (tx / hw) * hw;
    w.doff = (tx / hw) * chw + w.dj;
    w.wrap = chw - hw;
    return w;
}

__device__ __forceinline__ void walk_next(ChannelWalk& w) {
    w.j += w.dj;
    w.off += w.doff;
    if (w.j >= w.hw) {
        w.j -= w.hw;
        w.off += w.wrap;
    }
}

// Sum over the tx threads of this block row (one channel), returned to each of them.
__device__ __forceinline__ float row_sum(float v) {
    __shared__ float partial[32];
    const u32 tid = threadIdx.y * blockDim.x + threadIdx.x;
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading `partial`
    if ((tid & 31) == 0) partial[tid >> 5] = v;
    __syncthreads();
    const u32 warps = blockDim.x >> 5, first = threadIdx.y * warps;
    float s = 0.0f;
    for (u32 k = 0; k < warps; ++k) s += partial[first + k];
    return s;
}

// Two passes per channel (mean, then centred squares) for accuracy.
template <typename T>
__device__ __forceinline__ void bn_stats(const T* __restrict__ x, u32 n, u32 c, u32 hw,
                                         float momentum, float eps, float* __restrict__ mean_out,
                                         float* __restrict__ invstd_out,
                                         float* __restrict__ running_mean,
                                         float* __restrict__ running_var) {
    const u32 count = n * hw, tx = blockDim.x, t = threadIdx.x;
    for (u32 first = blockIdx.x * blockDim.y; first < c; first += gridDim.x * blockDim.y) {
        const u32 ch = first + threadIdx.y;
        const bool live = ch < c;  // idle rows still take part in the block's barriers
        float s = 0.0f;
        if (live) {
            ChannelWalk w = walk_start(ch, t, tx, c, hw);
            for (u32 k = t; k < count; k += tx, walk_next(w)) s += ld(x, w.off);
        }
        const float mean = row_sum(s) / (float)count;
        float q = 0.0f;
        if (live) {
            ChannelWalk w = walk_start(ch, t, tx, c, hw);
            for (u32 k = t; k < count; k += tx, walk_next(w)) {
                const float d = ld(x, w.off) - mean;
                q += d * d;
            }
        }
        const float var = row_sum(q) / (float)count;
        if (live && t == 0) {
            mean_out[ch] = mean;
            invstd_out[ch] = 1.0f / sqrtf(var + eps);
            const float unbiased = var * ((float)count / (float)(count - 1));
            running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * mean;
            running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * unbiased;
        }
    }
}

extern "C" __global__ void bn_stats_f32(const float* __restrict__ x, u32 n, u32 c, u32 hw,
                                        float momentum, float eps, float* __restrict__ mean_out,
                                        float* __restrict__ invstd_out,
                                        float* __restrict__ running_mean,
                                        float* __restrict__ running_var) {
    bn_stats(x, n, c, hw, momentum, eps, mean_out, invstd_out, running_mean, running_var);
}

extern "C" __global__ void bn_stats_f16(const unsigned short* __restrict__ x, u32 n, u32 c,
                                        u32 hw, float momentum, float eps,
                                        float* __restrict__ mean_out,
                                        float* __restrict__ invstd_out,
                                        float* __restrict__ running_mean,
                                        float* __restrict__ running_var) {
    bn_stats(x, n, c, hw, momentum, eps, mean_out, invstd_out, running_mean, running_var);
}

// dbeta[c] = sum dz, dgamma[c] = sum dz * xhat, where dz = dy through the activation (whose
// mask comes from z recomputed from x).
template <typename T>
__device__ __forceinline__ void bn_backward_reduce(
    const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ mean,
    const float* __restrict__ invstd, int act, float slope, u32 n, u32 c, u32 hw,
    float* __restrict__ dgamma, float* __restrict__ dbeta) {
    const u32 count = n * hw, tx = blockDim.x, t = threadIdx.x;
    for (u32 first = blockIdx.x * blockDim.y; first < c; first += gridDim.x * blockDim.y) {
        const u32 ch = first + threadIdx.y;
        const bool live = ch < c;
        float sdz = 0.0f, sdzx = 0.0f;
        if (live) {
            const float m = mean[ch], is = invstd[ch], sh = beta[ch];
            const float scale = __fmul_rn(is, gamma[ch]);
            ChannelWalk w = walk_start(ch, t, tx, c, hw);
            for (u32 k = t; k < count; k += tx, walk_next(w)) {
                const float v = ld(x, w.off);
                const float g =
                    bn_act_grad(act, slope, bn_affine(v, m, scale, sh), ld(dy, w.off));
                sdz += g;
                sdzx += g * ((v - m) * is);
            }
        }
        sdz = row_sum(sdz);
        sdzx = row_sum(sdzx);
        if (live && t == 0) {
            dbeta[ch] = sdz;
            dgamma[ch] = sdzx;
        }
    }
}

extern "C" __global__ void bn_backward_reduce_f32(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ mean,
    const float* __restrict__ invstd, int act, float slope, u32 n, u32 c, u32 hw,
    float* __restrict__ dgamma, float* __restrict__ dbeta) {
    bn_backward_reduce(x, dy, gamma, beta, mean, invstd, act, slope, n, c, hw, dgamma, dbeta);
}

extern "C" __global__ void bn_backward_reduce_f16(
    const unsigned short* __restrict__ x, const unsigned short* __restrict__ dy,
    const float* __restrict__ gamma, const float* __restrict__ beta,
    const float* __restrict__ mean, const float* __restrict__ invstd, int act, float slope,
    u32 n, u32 c, u32 hw, float* __restrict__ dgamma, float* __restrict__ dbeta) {
    bn_backward_reduce(x, dy, gamma, beta, mean, invstd, act, slope, n, c, hw, dgamma, dbeta);
}

// ---- Elementwise passes.

// y = act((x - mean) * invstd * gamma + beta); training (batch statistics) and eval (running
// mean and 1 / sqrt(running_var + eps), see bn_invstd_f32) alike.
template <typename T>
__device__ __forceinline__ void bn_apply(const T* __restrict__ x, const float* __restrict__ mean,
                                         const float* __restrict__ invstd,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int act, float slope,
                                         u32 c, u32 hw, T* __restrict__ y, u32 total) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const u32 ch = bn_channel(i, c, hw);
        const float z = bn_affine(ld(x, i), mean[ch], __fmul_rn(invstd[ch], gamma[ch]), beta[ch]);
        st(y, i, bn_act(act, slope, z));
    }
}

extern "C" __global__ void bn_apply_f32(const float* __restrict__ x,
                                        const float* __restrict__ mean,
                                        const float* __restrict__ invstd,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, int act, float slope,
                                        u32 c, u32 hw, float* __restrict__ y, u32 total) {
    bn_apply(x, mean, invstd, gamma, beta, act, slope, c, hw, y, total);
}

extern "C" __global__ void bn_apply_f16(const unsigned short* __restrict__ x,
                                        const float* __restrict__ mean,
                                        const float* __restrict__ invstd,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, int act, float slope,
                                        u32 c, u32 hw, unsigned short* __restrict__ y,
                                        u32 total) {
    bn_apply(x, mean, invstd, gamma, beta, act, slope, c, hw, y, total);
}

// invstd = 1 / sqrt(var + eps): eval mode's normalisation from the running variance.
extern "C" __global__ void bn_invstd_f32(const float* __restrict__ var, float eps,
                                         float* __restrict__ invstd, u32 c) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < c; i += blockDim.x * gridDim.x)
        invstd[i] = 1.0f / sqrtf(var[i] + eps);
}

// Eval mode: normalise with the running statistics.
template <typename T>
__device__ __forceinline__ void bn_eval(const T* __restrict__ x,
                                        const float* __restrict__ running_mean,
                                        const float* __restrict__ running_var,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float eps, u32 c, u32 hw,
                                        T* __restrict__ y, u32 total) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const u32 ch = bn_channel(i, c, hw);
        const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
        st(y, i, (ld(x, i) - running_mean[ch]) * invstd * gamma[ch] + beta[ch]);
    }
}

extern "C" __global__ void bn_eval_f32(const float* __restrict__ x,
                                       const float* __restrict__ running_mean,
                                       const float* __restrict__ running_var,
                                       const float* __restrict__ gamma,
                                       const float* __restrict__ beta, float eps, u32 c, u32 hw,
                                       float* __restrict__ y, u32 total) {
    bn_eval(x, running_mean, running_var, gamma, beta, eps, c, hw, y, total);
}

extern "C" __global__ void bn_eval_f16(const unsigned short* __restrict__ x,
                                       const float* __restrict__ running_mean,
                                       const float* __restrict__ running_var,
                                       const float* __restrict__ gamma,
                                       const float* __restrict__ beta, float eps, u32 c, u32 hw,
                                       unsigned short* __restrict__ y, u32 total) {
    bn_eval(x, running_mean, running_var, gamma, beta, eps, c, hw, y, total);
}

// With batch statistics (training): dx = gamma * invstd / M * (M * dz - dbeta - xhat * dgamma),
// M = n * hw. Without (eval, the statistics are constants): dx = dz * gamma * invstd.
template <typename T>
__device__ __forceinline__ void bn_backward_dx(
    const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ mean,
    const float* __restrict__ invstd, const float* __restrict__ dgamma,
    const float* __restrict__ dbeta, int act, float slope, int batch_stats, u32 n, u32 c,
    u32 hw, T* __restrict__ dx) {
    const u32 total = n * c * hw;
    const float m_count = (float)(n * hw);
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const u32 ch = bn_channel(i, c, hw);
        const float is = invstd[ch], ga = gamma[ch], v = ld(x, i);
        const float z = bn_affine(v, mean[ch], __fmul_rn(is, ga), beta[ch]);
        const float g = bn_act_grad(act, slope, z, ld(dy, i));
        if (batch_stats) {
            const float xhat = (v - mean[ch]) * is;
            st(dx, i, ga * is / m_count * (m_count * g - dbeta[ch] - xhat * dgamma[ch]));
        } else {
            st(dx, i, g * ga * is);
        }
    }
}

extern "C" __global__ void bn_backward_dx_f32(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ mean,
    const float* __restrict__ invstd, const float* __restrict__ dgamma,
    const float* __restrict__ dbeta, int act, float slope, int batch_stats, u32 n, u32 c,
    u32 hw, float* __restrict__ dx) {
    bn_backward_dx(x, dy, gamma, beta, mean, invstd, dgamma, dbeta, act, slope, batch_stats, n,
                   c, hw, dx);
}

extern "C" __global__ void bn_backward_dx_f16(
    const unsigned short* __restrict__ x, const unsigned short* __restrict__ dy,
    const float* __restrict__ gamma, const float* __restrict__ beta,
    const float* __restrict__ mean, const float* __restrict__ invstd,
    const float* __restrict__ dgamma, const float* __restrict__ dbeta, int act, float slope,
    int batch_stats, u32 n, u32 c, u32 hw, unsigned short* __restrict__ dx) {
    bn_backward_dx(x, dy, gamma, beta, mean, invstd, dgamma, dbeta, act, slope, batch_stats, n,
                   c, hw, dx);
}
