// Elementwise ops and activations (forward and backward). Memory-bound: one grid-stride pass.
#include "common.cuh"

extern "C" __global__ void fill_f32(float* __restrict__ y, float value, u64 n) {
    GRID_STRIDE(i, n) y[i] = value;
}

// add, add_assign and the activations are written once over the storage type T: float for
// the `_f32` kernels, f16 bits for the `_f16` ones (amp's activations and their gradients:
// loaded to f32, the same f32 arithmetic, rounded once on store).
template <typename T>
__device__ __forceinline__ void add(const T* __restrict__ a, const T* __restrict__ b,
                                    T* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) st(y, i, ld(a, i) + ld(b, i));
}

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, u64 n) {
    add(a, b, y, n);
}

extern "C" __global__ void add_f16(const unsigned short* __restrict__ a,
                                   const unsigned short* __restrict__ b,
                                   unsigned short* __restrict__ y, u64 n) {
    add(a, b, y, n);
}

template <typename T>
__device__ __forceinline__ void add_assign(T* __restrict__ acc, const T* __restrict__ x, u64 n) {
    GRID_STRIDE(i, n) st(acc, i, ld(acc, i) + ld(x, i));
}

extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x,
                                          u64 n) {
    add_assign(acc, x, n);
}

extern "C" __global__ void add_assign_f16(unsigned short* __restrict__ acc,
                                          const unsigned short* __restrict__ x, u64 n) {
    add_assign(acc, x, n);
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

template <typename T>
__device__ __forceinline__ void act_forward(int kind, float slope, const T* __restrict__ x,
                                            T* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) {
        const float v = ld(x, i);
        float r;
        switch (kind) {
            case ACT_RELU: r = v > 0.0f ? v : 0.0f; break;
            case ACT_LEAKY: r = v > 0.0f ? v : v * slope; break;
            case ACT_TANH: r = tanhf(v); break;
            default: r = sigmoidf_(v); break;
        }
        st(y, i, r);
    }
}

extern "C" __global__ void act_forward_f32(int kind, float slope, const float* __restrict__ x,
                                           float* __restrict__ y, u64 n) {
    act_forward(kind, slope, x, y, n);
}

extern "C" __global__ void act_forward_f16(int kind, float slope,
                                           const unsigned short* __restrict__ x,
                                           unsigned short* __restrict__ y, u64 n) {
    act_forward(kind, slope, x, y, n);
}

// dx from the forward input x, output y and dy (tanh and sigmoid use y, as PyTorch).
template <typename T>
__device__ __forceinline__ void act_backward(int kind, float slope, const T* __restrict__ x,
                                             const T* __restrict__ y, const T* __restrict__ dy,
                                             T* __restrict__ dx, u64 n) {
    GRID_STRIDE(i, n) {
        const float g = ld(dy, i);
        float r;
        switch (kind) {
            case ACT_RELU: r = ld(x, i) > 0.0f ? g : 0.0f; break;
            case ACT_LEAKY: r = ld(x, i) > 0.0f ? g : g * slope; break;
            case ACT_TANH: {
                const float t = ld(y, i);
                r = g * (1.0f - __fmul_rn(t, t));
                break;
            }
            default: {
                const float s = ld(y, i);
                r = __fmul_rn(g, s) * (1.0f - s);
                break;
            }
        }
        st(dx, i, r);
    }
}

extern "C" __global__ void act_backward_f32(int kind, float slope, const float* __restrict__ x,
                                            const float* __restrict__ y,
                                            const float* __restrict__ dy,
                                            float* __restrict__ dx, u64 n) {
    act_backward(kind, slope, x, y, dy, dx, n);
}

extern "C" __global__ void act_backward_f16(int kind, float slope,
                                            const unsigned short* __restrict__ x,
                                            const unsigned short* __restrict__ y,
                                            const unsigned short* __restrict__ dy,
                                            unsigned short* __restrict__ dx, u64 n) {
    act_backward(kind, slope, x, y, dy, dx, n);
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
