// Conditional-model ops (class embeddings, class-conditional batch-norm affine, projection
// inner product). Reductions use one block per output row with block_sum's fixed tree
// (deterministic); the scatter-add of the embedding backward gives each output element to one thread that walks the batch in order,
// so it needs no float atomics and matches the CPU's summation order exactly.
#include "common.cuh"

// out[b, j] = table[labels[b], j].
extern "C" __global__ void embedding_f32(const float* __restrict__ table,
                                         const float* __restrict__ labels, u64 batch, u64 dim,
                                         float* __restrict__ out) {
    GRID_STRIDE(i, batch * dim) {
        const u64 b = i / dim, j = i - b * dim;
        const u64 k = (u64)labels[b];
        out[i] = table[k * dim + j];
    }
}

// out[k, j] = sum over b (in order) with labels[b] == k of dy[b, j].
extern "C" __global__ void embedding_backward_f32(const float* __restrict__ dy,
                                                  const float* __restrict__ labels, u64 batch,
                                                  u64 classes, u64 dim,
                                                  float* __restrict__ out) {
    GRID_STRIDE(i, classes * dim) {
        const u64 k = i / dim, j = i - k * dim;
        float acc = 0.0f;
        for (u64 b = 0; b < batch; ++b)
            if ((u64)labels[b] == k) acc += dy[b * dim + j];
        out[i] = acc;
    }
}

// y[n, c, p] = x[n, c, p] * scale[n, c] + shift[n, c].
extern "C" __global__ void channel_affine_f32(const float* __restrict__ x,
                                              const float* __restrict__ scale,
                                              const float* __restrict__ shift, u64 hw,
                                              u64 total, float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const u64 nc = i / hw;
        y[i] = __fadd_rn(__fmul_rn(x[i], scale[nc]), shift[nc]);
    }
}

// dx[n, c, p] = dy * scale[n, c].
extern "C" __global__ void channel_affine_dx_f32(const float* __restrict__ dy,
                                                 const float* __restrict__ scale, u64 hw,
                                                 u64 total, float* __restrict__ dx) {
    GRID_STRIDE(i, total) dx[i] = __fmul_rn(dy[i], scale[i / hw]);
}

// dscale[nc] = sum_p dy * x, dshift[nc] = sum_p dy; one block per (n, c).
extern "C" __global__ void channel_affine_reduce_f32(const float* __restrict__ x,
                                                     const float* __restrict__ dy, u64 rows,
                                                     u64 hw, float* __restrict__ dscale,
                                                     float* __restrict__ dshift) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float s = 0.0f, t = 0.0f;
        for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
            const float g = dy[r * hw + p];
            s += g * x[r * hw + p];
            t += g;
        }
        s = block_sum(s);
        t = block_sum(t);
        if (threadIdx.x == 0) {
            dscale[r] = s;
            dshift[r] = t;
        }
    }
}

// Channel gate: y[n, c, p] = x[n, c, p] * g[n, c] (its dx is channel_affine_dx_f32's).
extern "C" __global__ void channel_gate_f32(const float* __restrict__ x,
                                            const float* __restrict__ g, u64 hw, u64 total,
                                            float* __restrict__ y) {
    GRID_STRIDE(i, total) y[i] = __fmul_rn(x[i], g[i / hw]);
}

// dg[nc] = sum_p dy * x; one block per (n, c).
extern "C" __global__ void channel_gate_dg_f32(const float* __restrict__ x,
                                               const float* __restrict__ dy, u64 rows, u64 hw,
                                               float* __restrict__ dg) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float s = 0.0f;
        for (u64 p = threadIdx.x; p < hw; p += blockDim.x) s += dy[r * hw + p] * x[r * hw + p];
        s = block_sum(s);
        if (threadIdx.x == 0) dg[r] = s;
    }
}

// out[r] = sum_c a[r, c] * b[r, c]; one block per row.
extern "C" __global__ void row_dot_f32(const float* __restrict__ a, const float* __restrict__ b,
                                       u64 rows, u64 cols, float* __restrict__ out) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) acc += a[r * cols + c] * b[r * cols + c];
        acc = block_sum(acc);
        if (threadIdx.x == 0) out[r] = acc;
    }
}

// da = g[r] * b, db = g[r] * a.
extern "C" __global__ void row_dot_backward_f32(const float* __restrict__ a,
                                                const float* __restrict__ b,
                                                const float* __restrict__ g, u64 cols,
                                                u64 total, float* __restrict__ da,
                                                float* __restrict__ db) {
    GRID_STRIDE(i, total) {
        const float gr = g[i / cols];
        da[i] = __fmul_rn(gr, b[i]);
        db[i] = __fmul_rn(gr, a[i]);
    }
}
