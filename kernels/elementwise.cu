// Elementwise ops and activations (forward and backward). Memory-bound: one grid-stride pass.
#include "common.cuh"

extern "C" __global__ void fill_f32(float* __restrict__ y, float value, u64 n) {
    GRID_STRIDE(i, n) y[i] = value;
}

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x,
                                          u64 n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

extern "C" __global__ void mul_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] * b[i];
}

extern "C" __global__ void scale_f32(const float* __restrict__ a, float alpha,
                                     float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] * alpha;
}

// y = 1 / a (IEEE division, as on the CPU).
extern "C" __global__ void reciprocal_f32(const float* __restrict__ a, float* __restrict__ y,
                                          u64 n) {
    GRID_STRIDE(i, n) y[i] = __fdiv_rn(1.0f, a[i]);
}

// y = a * s[0] * alpha, the scalar read on the device (no host round trip).
extern "C" __global__ void scale_by_scalar_f32(const float* __restrict__ a,
                                               const float* __restrict__ s, float alpha,
                                               float* __restrict__ y, u64 n) {
    const float k = s[0];
    GRID_STRIDE(i, n) y[i] = __fmul_rn(a[i], k) * alpha;
}

// Activation codes shared with the host (src/backend/cuda/mod.rs, `act_code`).
#define ACT_RELU 0
#define ACT_LEAKY 1
#define ACT_TANH 2
#define ACT_SIGMOID 3

extern "C" __global__ void act_forward_f32(int kind, float slope, const float* __restrict__ x,
                                           float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        float r;
        switch (kind) {
            case ACT_RELU: r = v > 0.0f ? v : 0.0f; break;
            case ACT_LEAKY: r = v > 0.0f ? v : v * slope; break;
            case ACT_TANH: r = tanhf(v); break;
            default: r = sigmoidf_(v); break;
        }
        y[i] = r;
    }
}

// dx from the forward input x, output y and dy (tanh and sigmoid use y, as PyTorch).
extern "C" __global__ void act_backward_f32(int kind, float slope, const float* __restrict__ x,
                                            const float* __restrict__ y,
                                            const float* __restrict__ dy,
                                            float* __restrict__ dx, u64 n) {
    GRID_STRIDE(i, n) {
        const float g = dy[i];
        float r;
        switch (kind) {
            case ACT_RELU: r = x[i] > 0.0f ? g : 0.0f; break;
            case ACT_LEAKY: r = x[i] > 0.0f ? g : g * slope; break;
            case ACT_TANH: {
                const float t = y[i];
                r = g * (1.0f - __fmul_rn(t, t));
                break;
            }
            default: {
                const float s = y[i];
                r = __fmul_rn(g, s) * (1.0f - s);
                break;
            }
        }
        dx[i] = r;
    }
}

// GLU over channels (host twin: reference/elementwise.rs `glu`): x [n, 2c, hw], y [n, c, hw]
// = a * sigmoid(b), a the first c channels of each image, b the last c; chw = c * hw. Output
// element i of image k = i / chw reads a at i + k * chw and b one chw further.
extern "C" __global__ void glu_forward_f32(const float* __restrict__ x, u64 chw, u64 total,
                                           float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const u64 ia = i + (i / chw) * chw;
        y[i] = __fmul_rn(x[ia], sigmoidf_(x[ia + chw]));
    }
}

// dx [n, 2c, hw] from x and dy [n, c, hw]: da = dy * s, db = dy * a * s * (1 - s), s = sigmoid(b),
// multiplied in the host's order. Each thread writes its a and its b element: every dx is set.
extern "C" __global__ void glu_backward_f32(const float* __restrict__ x,
                                            const float* __restrict__ dy, u64 chw, u64 total,
                                            float* __restrict__ dx) {
    GRID_STRIDE(i, total) {
        const u64 ia = i + (i / chw) * chw, ib = ia + chw;
        const float a = x[ia], s = sigmoidf_(x[ib]), g = dy[i];
        dx[ia] = __fmul_rn(g, s);
        dx[ib] = __fmul_rn(__fmul_rn(__fmul_rn(g, a), s), 1.0f - s);
    }
}
