// Resampling of NCHW planes (host twin: reference/resample.rs): nearest upsampling, adaptive
// average pooling, cropping. One thread per output element, grid-stride, 64-bit indices. The
// backward passes gather (each dx element sums the dy elements it fed, in a fixed order, and is
// written once by one thread): deterministic, no atomics.
#include "common.cuh"

// y [p, h*s, w*s] from x [p, h, w]: y[p, i, j] = x[p, i / s, j / s].
extern "C" __global__ void upsample_nearest_f32(const float* __restrict__ x, u64 h, u64 w, u64 s,
                                                u64 total, float* __restrict__ y) {
    const u64 oh = h * s, ow = w * s;
    GRID_STRIDE(i, total) {
        const u64 j = i % ow, t = i / ow, r = t % oh, p = t / oh;
        y[i] = x[(p * h + r / s) * w + j / s];
    }
}

// dx [p, h, w]: the sum of each pixel's s x s block of dy [p, h*s, w*s], row by row.
extern "C" __global__ void upsample_nearest_backward_f32(const float* __restrict__ dy, u64 h,
                                                         u64 w, u64 s, u64 total,
                                                         float* __restrict__ dx) {
    const u64 oh = h * s, ow = w * s;
    GRID_STRIDE(i, total) {
        const u64 c = i % w, t = i / w, r = t % h, p = t / h;
        const float* block = dy + (p * oh + r * s) * ow + c * s;
        float acc = 0.0f;
        for (u64 a = 0; a < s; ++a)
            for (u64 b = 0; b < s; ++b) acc += block[a * ow + b];
        dx[i] = acc;
    }
}

// Adaptive pooling's bin k of `out` over `len` positions, as PyTorch:
// floor(k * len / out) .. ceil((k + 1) * len / out).
__device__ __forceinline__ u64 bin_start(u64 k, u64 out, u64 len) { return k * len / out; }
__device__ __forceinline__ u64 bin_end(u64 k, u64 out, u64 len) {
    return ((k + 1) * len + out - 1) / out;
}

// y [p, oh, ow]: the mean of each bin of x [p, h, w].
extern "C" __global__ void adaptive_avg_pool_f32(const float* __restrict__ x, u64 h, u64 w,
                                                 u64 oh, u64 ow, u64 total,
                                                 float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const u64 j = i % ow, t = i / ow, k = t % oh, p = t / oh;
        const u64 r0 = bin_start(k, oh, h), r1 = bin_end(k, oh, h);
        const u64 c0 = bin_start(j, ow, w), c1 = bin_end(j, ow, w);
        float acc = 0.0f;
        for (u64 r = r0; r < r1; ++r)
            for (u64 c = c0; c < c1; ++c) acc += x[(p * h + r) * w + c];
        y[i] = acc / (float)((r1 - r0) * (c1 - c0));
    }
}

// dx [p, h, w]: the sum of dy / bin size over the bins covering the pixel. Bin k covers row r
// exactly when floor(r * oh / h) <= k < ceil((r + 1) * oh / h) (the bins' inverse).
extern "C" __global__ void adaptive_avg_pool_backward_f32(const float* __restrict__ dy, u64 h,
                                                          u64 w, u64 oh, u64 ow, u64 total,
                                                          float* __restrict__ dx) {
    GRID_STRIDE(i, total) {
        const u64 c = i % w, t = i / w, r = t % h, p = t / h;
        const u64 k0 = bin_start(r, h, oh), k1 = bin_end(r, h, oh);
        const u64 j0 = bin_start(c, w, ow), j1 = bin_end(c, w, ow);
        float acc = 0.0f;
        for (u64 k = k0; k < k1; ++k) {
            const u64 rows = bin_end(k, oh, h) - bin_start(k, oh, h);
            for (u64 j = j0; j < j1; ++j) {
                const u64 cols = bin_end(j, ow, w) - bin_start(j, ow, w);
                acc += dy[(p * oh + k) * ow + j] / (float)(rows * cols);
            }
        }
        dx[i] = acc;
    }
}

// y [p, ch, cw] = x [p, h, w] rows top.., columns left.. .
extern "C" __global__ void crop_f32(const float* __restrict__ x, u64 h, u64 w, u64 top, u64 left,
                                    u64 ch, u64 cw, u64 total, float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const u64 j = i % cw, t = i / cw, r = t % ch, p = t / ch;
        y[i] = x[(p * h + top + r) * w + left + j];
    }
}

// dx [p, h, w]: dy [p, ch, cw] inside the window, 0 outside (every element written).
extern "C" __global__ void crop_backward_f32(const float* __restrict__ dy, u64 h, u64 w, u64 top,
                                             u64 left, u64 ch, u64 cw, u64 total,
                                             float* __restrict__ dx) {
    GRID_STRIDE(i, total) {
        const u64 c = i % w, t = i / w, r = t % h, p = t / h;
        const bool inside = r >= top && r < top + ch && c >= left && c < left + cw;
        dx[i] = inside ? dy[(p * ch + r - top) * cw + c - left] : 0.0f;
    }
}
