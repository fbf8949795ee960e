// Spectral norm of W viewed as [rows, cols] (PyTorch's torch.nn.utils.spectral_norm):
// one power iteration v = normalize(W^T u), u = normalize(W v) (eps-clamped norms),
// sigma = u^T W v, and the backward of W / sigma with u, v held fixed.
#include "common.cuh"

// out[j] = sum_i W[i, j] * u[i]: one thread per column, rows walked in order (coalesced).
extern "C" __global__ void sn_wt_u_f32(const float* __restrict__ w, const float* __restrict__ u,
                                       u64 rows, u64 cols, float* __restrict__ out) {
    GRID_STRIDE(j, cols) {
        float acc = 0.0f;
        for (u64 i = 0; i < rows; ++i) acc += w[i * cols + j] * u[i];
        out[j] = acc;
    }
}

// out[i] = sum_j W[i, j] * v[j]: one block per row.
extern "C" __global__ void sn_w_v_f32(const float* __restrict__ w, const float* __restrict__ v,
                                      u64 rows, u64 cols, float* __restrict__ out) {
    for (u64 i = blockIdx.x; i < rows; i += gridDim.x) {
        float acc = 0.0f;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) acc += w[i * cols + j] * v[j];
        acc = block_sum(acc);
        if (threadIdx.x == 0) out[i] = acc;
    }
}

// out = t / max(||t||, eps); launched as a single block.
extern "C" __global__ void sn_normalize_f32(const float* __restrict__ t, u64 n, float eps,
                                            float* __restrict__ out) {
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += t[i] * t[i];
    const float norm = fmaxf(sqrtf(block_sum(acc)), eps);
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) out[i] = t[i] / norm;
}

// sigma = u . wv; launched as a single block.
extern "C" __global__ void sn_sigma_f32(const float* __restrict__ u, const float* __restrict__ wv,
                                        u64 n, float* __restrict__ sigma) {
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += u[i] * wv[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) sigma[0] = acc;
}

// dW = g / sigma - (gw / sigma^2) u v^T, where gw = sum(g * W) was reduced beforehand.
extern "C" __global__ void sn_backward_f32(const float* __restrict__ g,
                                           const float* __restrict__ u,
                                           const float* __restrict__ v,
                                           const float* __restrict__ sigma,
                                           const float* __restrict__ gw, u64 rows, u64 cols,
                                           float* __restrict__ dw) {
    const float s = sigma[0];
    const float k = gw[0] / (s * s);
    GRID_STRIDE(idx, rows * cols) {
        const u64 i = idx / cols, j = idx - i * cols;
        dw[idx] = g[idx] / s - k * u[i] * v[j];
    }
}
