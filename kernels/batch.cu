// Batch assembly on the GPU from the image set kept there as bytes (HWC RGB, `size`x`size`,
// one image after another): gather, optional left-right mirror, optional rotation about the
// centre (bilinear, mirror-reflected edges), bytes to [-1, 1]. One thread per output element
// of the NCHW batch.
//
// The reference is crate::backend::batch::assemble_image. Every float operation below is
// the same IEEE operation in the same order (explicit _rn intrinsics, so that nvrtc's default
// FMA contraction cannot fuse a multiply into an add; fmodf and floorf are exact), and sine
// and cosine are computed on the host, so the result is expected to be bit-identical.
//
// The per-image plan travels by value as the kernel parameter (under the 4 KiB limit): no
// host-to-device copy and no synchronisation per batch. Batches larger than AUG_MAX_IMAGES
// are made in several launches, `first` being the batch position of the table's image 0.
#include "common.cuh"

#define AUG_MAX_IMAGES 128
#define AUG_FLIP 1u
#define AUG_ROTATE 2u

// Must match `AugTable` in src/backend/cuda/mod.rs (repr(C)).
struct AugTable {
    u32 index[AUG_MAX_IMAGES];  // image index into the set
    u32 flags[AUG_MAX_IMAGES];  // AUG_FLIP | AUG_ROTATE
    float sin_a[AUG_MAX_IMAGES];
    float cos_a[AUG_MAX_IMAGES];
    u32 count;
};

// crate::backend::batch::reflect.
__device__ __forceinline__ float aug_reflect(float t, u32 n) {
    if (n <= 1u) return 0.0f;
    const float last = (float)(n - 1u);
    if (0.0f <= t && t <= last) return t;
    const float period = __fmul_rn(2.0f, last);
    const float r = fmodf(fabsf(t), period);
    return r > last ? __fsub_rn(period, r) : r;
}

__device__ __forceinline__ float aug_at(const unsigned char* __restrict__ src, u32 size, u32 x,
                                        u32 y, u32 c) {
    return (float)src[((u64)y * size + x) * 3u + c];
}

// out[(first + b) * 3*size*size + c*size*size + y*size + x] for b < t.count; n = t.count *
// 3*size*size elements.
extern "C" __global__ void assemble_batch_u8(const unsigned char* __restrict__ images,
                                             float* __restrict__ out, const AugTable t, u32 size,
                                             u64 first, u64 n) {
    const u64 plane = (u64)size * size;
    const u64 per_image = 3u * plane;
    GRID_STRIDE(i, n) {
        const u32 b = (u32)(i / per_image);
        const u64 r = i - (u64)b * per_image;
        const u32 c = (u32)(r / plane);
        const u64 p = r - (u64)c * plane;
        const u32 y = (u32)(p / size);
        const u32 x = (u32)(p - (u64)y * size);
        const unsigned char* __restrict__ src = images + (u64)t.index[b] * per_image;
        const u32 flags = t.flags[b];
        float v;
        if (!(flags & AUG_ROTATE)) {
            const u32 sx = (flags & AUG_FLIP) ? size - 1u - x : x;
            v = aug_at(src, size, sx, y, c);
        } else {
            const float sn = t.sin_a[b];
            const float cs = t.cos_a[b];
            const float s_f = (float)size;
            const float centre = __fdiv_rn(__fsub_rn(s_f, 1.0f), 2.0f);
            const float dx = __fsub_rn((float)x, centre);
            const float dy = __fsub_rn((float)y, centre);
            float sx = __fsub_rn(__fadd_rn(centre, __fmul_rn(cs, dx)), __fmul_rn(sn, dy));
            float sy = __fadd_rn(__fadd_rn(centre, __fmul_rn(sn, dx)), __fmul_rn(cs, dy));
            if (flags & AUG_FLIP) sx = __fsub_rn(__fsub_rn(s_f, 1.0f), sx);
            sx = aug_reflect(sx, size);
            sy = aug_reflect(sy, size);
            const u32 x0 = (u32)floorf(sx);
            const u32 y0 = (u32)floorf(sy);
            const u32 x1 = x0 + 1u < size ? x0 + 1u : size - 1u;
            const u32 y1 = y0 + 1u < size ? y0 + 1u : size - 1u;
            const float fx = __fsub_rn(sx, (float)x0);
            const float fy = __fsub_rn(sy, (float)y0);
            const float gx = __fsub_rn(1.0f, fx);
            const float gy = __fsub_rn(1.0f, fy);
            const float top = __fadd_rn(__fmul_rn(aug_at(src, size, x0, y0, c), gx),
                                        __fmul_rn(aug_at(src, size, x1, y0, c), fx));
            const float bot = __fadd_rn(__fmul_rn(aug_at(src, size, x0, y1, c), gx),
                                        __fmul_rn(aug_at(src, size, x1, y1, c), fx));
            v = __fadd_rn(__fmul_rn(top, gy), __fmul_rn(bot, fy));
        }
        out[first * per_image + i] = __fsub_rn(__fdiv_rn(v, 127.5f), 1.0f);
    }
}
