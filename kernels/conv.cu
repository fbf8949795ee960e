// im2col / col2im for convolution as GEMM (cuBLAS does the multiply). Images [n, c, h, w];
// a column matrix has K = c_in * kh * kw rows and L = oh * ow columns per image. Kernels work
// on a chunk of `nb` images starting at image `n0`, so the host can bound the column buffer.
#include "common.cuh"

// col[b * nstride + k * kstride + l] = x_padded[n0 + b, ci, oy * s - p + ki, ox * s - p + kj]
// with k = (ci * kh + ki) * kw + kj and l = oy * ow + ox. (nstride, kstride) = (K * L, L) gives
// the per-image [K, L] layout of the forward; (L, nb * L) gives [K, nb * L] for the filter
// gradient, where the whole chunk becomes one GEMM.
extern "C" __global__ void im2col_f32(const float* __restrict__ x, int n0, int nb, int c_in,
                                      int h, int w, int kh, int kw, int stride, int pad, int oh,
                                      int ow, u64 nstride, u64 kstride,
                                      float* __restrict__ col) {
    const u64 L = (u64)oh * ow;
    const u64 K = (u64)c_in * kh * kw;
    GRID_STRIDE(idx, (u64)nb * K * L) {
        const u64 l = idx % L;
        const u64 k = (idx / L) % K;
        const u64 b = idx / (L * K);
        const int kj = (int)(k % kw);
        const int ki = (int)((k / kw) % kh);
        const int ci = (int)(k / ((u64)kw * kh));
        const int oy = (int)(l / ow), ox = (int)(l % ow);
        const int iy = oy * stride - pad + ki, ix = ox * stride - pad + kj;
        float v = 0.0f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            v = x[(((u64)(n0 + b) * c_in + ci) * h + iy) * w + ix];
        col[b * nstride + k * kstride + l] = v;
    }
}

// dx[n0 + b, ci, y, x] = sum of the column entries that im2col read from that pixel
// (layout [b][K][L]). A gather, one thread per input pixel: no atomics, deterministic.
extern "C" __global__ void col2im_f32(const float* __restrict__ col, int n0, int nb, int c_in,
                                      int h, int w, int kh, int kw, int stride, int pad, int oh,
                                      int ow, float* __restrict__ dx) {
    const u64 L = (u64)oh * ow;
    const u64 K = (u64)c_in * kh * kw;
    const u64 hw = (u64)h * w;
    GRID_STRIDE(idx, (u64)nb * c_in * hw) {
        const int xx = (int)(idx % w);
        const int yy = (int)((idx / w) % h);
        const int ci = (int)((idx / hw) % c_in);
        const u64 b = idx / (hw * c_in);
        const float* cb = col + b * K * L;
        float acc = 0.0f;
        for (int ki = 0; ki < kh; ++ki) {
            const int ty = yy + pad - ki;
            if (ty < 0 || ty % stride != 0) continue;
            const int oy = ty / stride;
            if (oy >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int tx = xx + pad - kj;
                if (tx < 0 || tx % stride != 0) continue;
                const int ox = tx / stride;
                if (ox >= ow) continue;
                acc += cb[((u64)(ci * kh + ki) * kw + kj) * L + (u64)oy * ow + ox];
            }
        }
        dx[(u64)n0 * c_in * hw + idx] = acc;
    }
}

// dyt[co, b * L + l] = dy[n0 + b, co, l]: puts the chunk's output gradient in the
// [c_out, nb * L] layout that the filter-gradient GEMM needs.
extern "C" __global__ void gather_dy_f32(const float* __restrict__ dy, int n0, int nb, int c_out,
                                         u64 L, float* __restrict__ dyt) {
    const u64 cols = (u64)nb * L;
    GRID_STRIDE(idx, (u64)c_out * cols) {
        const u64 co = idx / cols;
        const u64 r = idx - co * cols;
        const u64 b = r / L, l = r - b * L;
        dyt[idx] = dy[((u64)(n0 + b) * c_out + co) * L + l];
    }
}

// ---- Mixed precision: GEMM operands rounded to f16 (see src/backend/reference/conv.rs).
// The f16 copy of x[0..n) for cuBLAS GemmEx and cuDNN (CUDA_R_16F / CUDNN_DATA_HALF operands).
extern "C" __global__ void f32_to_f16(const float* x, u64 n, unsigned short* out) {
    GRID_STRIDE(i, n) { out[i] = f32_to_f16_bits(x[i]); }
}

// The f32 values of n halves (exact): cuDNN's f16 outputs back to f32.
extern "C" __global__ void f16_to_f32(const unsigned short* h, u64 n, float* out) {
    GRID_STRIDE(i, n) { out[i] = f16_bits_to_f32(h[i]); }
}
