// Row and channel reductions and their broadcasts. Reductions use one block per output with a
// fixed tree (deterministic, no float atomics).
#include "common.cuh"

// out[r] = alpha * sum_c x[r, c]; one block per row (grid-stride over rows).
extern "C" __global__ void sum_rows_f32(const float* __restrict__ x, u64 rows, u64 cols,
                                        float alpha, float* __restrict__ out) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = x + r * cols;
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += row[c];
        acc = block_sum(acc);
        if (threadIdx.x == 0) out[r] = alpha * acc;
    }
}

// out[r, c] = alpha * g[r].
extern "C" __global__ void broadcast_rows_f32(const float* __restrict__ g, u64 rows, u64 cols,
                                              float alpha, float* __restrict__ out) {
    GRID_STRIDE(i, rows * cols) out[i] = alpha * g[i / cols];
}

// out[n, c, hw] = y[n, c, hw] + b[c].
extern "C" __global__ void add_channel_bias_f32(const float* __restrict__ y,
                                                const float* __restrict__ b, u64 c, u64 hw,
                                                float* __restrict__ out, u64 total) {
    GRID_STRIDE(i, total) out[i] = y[i] + b[(i / hw) % c];
}

// out[ch] = sum_{n, hw} dy[n, ch, hw]; one block per channel.
extern "C" __global__ void channel_sum_f32(const float* __restrict__ dy, u64 n, u64 c, u64 hw,
                                           float* __restrict__ out) {
    for (u64 ch = blockIdx.x; ch < c; ch += gridDim.x) {
        float acc = 0.0f;
        const u64 count = n * hw;
        for (u64 i = threadIdx.x; i < count; i += blockDim.x) {
            const u64 b = i / hw, j = i - b * hw;
            acc += dy[(b * c + ch) * hw + j];
        }
        acc = block_sum(acc);
        if (threadIdx.x == 0) out[ch] = acc;
    }
}

// Deterministic two-stage dot product: stage 1 writes one partial per block.
extern "C" __global__ void dot_partials_f32(const float* __restrict__ a,
                                            const float* __restrict__ b, u64 n,
                                            float* __restrict__ partials) {
    float acc = 0.0f;
    GRID_STRIDE(i, n) acc += a[i] * b[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Stage 2: one block sums the partials into out[0].
extern "C" __global__ void sum_partials_f32(const float* __restrict__ partials, u64 n,
                                            float* __restrict__ out) {
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = acc;
}
