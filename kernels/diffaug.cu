// DiffAugment (colour, translation, cutout) with per-sample parameters. The colour step
// reduces with block_sum's fixed tree (deterministic).
#include "common.cuh"

// DiffAugment colour, one block per image. The channel mean after the saturation step has the
// same image mean as its input (x2 = s x1 + (1 - s) mean_c x1), so one reduction of x gives the
// contrast step's mean: mean_chw x2 = mean_chw x + brightness.
extern "C" __global__ void diffaug_color_f32(const float* __restrict__ x,
                                             const float* __restrict__ params, u64 n, u64 c,
                                             u64 hw, int brightness, float* __restrict__ y) {
    const u64 per = c * hw;
    for (u64 img = blockIdx.x; img < n; img += gridDim.x) {
        const float* xi = x + img * per;
        float* yi = y + img * per;
        const float b = brightness ? params[3 * img] : 0.0f;
        const float s = params[3 * img + 1], k = params[3 * img + 2];
        float acc = 0.0f;
        for (u64 i = threadIdx.x; i < per; i += blockDim.x) acc += xi[i];
        acc = block_sum(acc);
        const float mm = acc / (float)per + b;
        for (u64 p = threadIdx.x; p < hw; p += blockDim.x) {
            float m = 0.0f;
            for (u64 ch = 0; ch < c; ++ch) m += xi[ch * hw + p] + b;
            m = m / (float)c;
            for (u64 ch = 0; ch < c; ++ch) {
                const float x2 = (xi[ch * hw + p] + b - m) * s + m;
                yi[ch * hw + p] = (x2 - mm) * k + mm;
            }
        }
    }
}

// y[n, c, i, j] = x[n, c, i + sy, j + sx] (0 outside); shifts[n] = (sy, sx).
extern "C" __global__ void diffaug_translate_f32(const float* __restrict__ x,
                                                 const float* __restrict__ shifts, u64 c, u64 h,
                                                 u64 w, u64 total, float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const u64 j = i % w, row = (i / w) % h, img = i / (w * h * c);
        const long long si = (long long)row + (long long)shifts[2 * img];
        const long long sj = (long long)j + (long long)shifts[2 * img + 1];
        float v = 0.0f;
        if (si >= 0 && si < (long long)h && sj >= 0 && sj < (long long)w)
            v = x[i - row * w - j + (u64)si * w + (u64)sj];
        y[i] = v;
    }
}

// Zero inside boxes[n] = (y0, y1, x0, x1) (ends exclusive).
extern "C" __global__ void diffaug_cutout_f32(const float* __restrict__ x,
                                              const float* __restrict__ boxes, u64 c, u64 h,
                                              u64 w, u64 total, float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const long long j = (long long)(i % w), row = (long long)((i / w) % h);
        const u64 img = i / (w * h * c);
        const float* bx = boxes + 4 * img;
        const bool inside = (long long)bx[0] <= row && row < (long long)bx[1] &&
                            (long long)bx[2] <= j && j < (long long)bx[3];
        y[i] = inside ? 0.0f : x[i];
    }
}
