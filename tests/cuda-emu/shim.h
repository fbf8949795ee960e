// The CUDA device language as host C++, so that kernels/*.cu compile unchanged into the
// emulated device (forced in front of every kernel file with `-include shim.h`).
//
// Each CUDA thread of a block runs as its own fiber (see block.cpp): __syncthreads and the
// warp shuffles really wait for the other threads, so a missing barrier or a shuffle over the
// wrong lanes gives wrong results or an error, never accidentally right ones. Only one block
// of one kernel runs at a time in the process, which is what makes `__shared__` variables
// (plain statics in the section `emu_shared`) per-block; the runtime fills that section with
// NaN bytes before every block, so a read of shared memory nobody wrote shows up.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct emu_dim3 {
    unsigned x, y, z;
};

// The running CUDA thread (set by the scheduler before it switches to a fiber).
struct emu_thread_ctx {
    emu_dim3 thread_idx, block_idx, block_dim, grid_dim;
    unsigned lane, warp;
};
extern "C" emu_thread_ctx* emu_current;

extern "C" void emu_syncthreads(const char* file, int line);
// Exchanges one 64-bit value among the lanes of `mask`; returns the value of lane `src` (the
// caller's own value when `src` is -1).
extern "C" unsigned long long emu_shfl(unsigned mask, unsigned long long v, int src,
                                       const char* file, int line);
extern "C" void emu_syncwarp(unsigned mask, const char* file, int line);

#define threadIdx (emu_current->thread_idx)
#define blockIdx (emu_current->block_idx)
#define blockDim (emu_current->block_dim)
#define gridDim (emu_current->grid_dim)
#define warpSize 32

#define __global__
// Internal linkage: a device function's `__shared__` statics are then plain per-file statics. As
// inline functions with external linkage they would be COMDAT objects, which GCC refuses to
// place in one section with a kernel's own `__shared__` variables. (So a member function must
// not be marked __device__: it would become a static member and fail to compile.)
#define __device__ static
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ __attribute__((section("emu_shared"))) static
#define __constant__ static const

#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) emu_syncwarp_((__VA_ARGS__ + 0), __FILE__, __LINE__)
static inline void emu_syncwarp_(unsigned mask, const char* f, int l) {
    emu_syncwarp(mask ? mask : 0xffffffffu, f, l);
}
static inline void __threadfence() {}
static inline void __threadfence_block() {}

// ---- warp shuffles (CUDA Programming Guide, "Warp Shuffle Functions"): the source lane
// within segments of `width` lanes; a source outside the caller's segment gives its own value.
template <class T>
static inline unsigned long long emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
static inline T emu_from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

template <class T>
static inline T emu_shfl_sync_at(unsigned mask, T var, int src_lane, int width, const char* f,
                                 int l) {
    const int lane = (int)emu_current->lane;
    const int base = lane - lane % width;
    const int src = base + ((src_lane % width) + width) % width;
    return emu_from_bits<T>(emu_shfl(mask, emu_bits<T>(var), src, f, l));
}
template <class T>
static inline T emu_shfl_xor_at(unsigned mask, T var, int lane_mask, int width, const char* f,
                                int l) {
    const int lane = (int)emu_current->lane;
    const int src = lane ^ lane_mask;
    const bool outside = src >= (lane / width + 1) * width;
    return emu_from_bits<T>(emu_shfl(mask, emu_bits<T>(var), outside ? -1 : src, f, l));
}
template <class T>
static inline T emu_shfl_up_at(unsigned mask, T var, unsigned delta, int width, const char* f,
                               int l) {
    const int lane = (int)emu_current->lane;
    const bool own = lane % width < (int)delta;
    return emu_from_bits<T>(emu_shfl(mask, emu_bits<T>(var), own ? -1 : lane - (int)delta, f, l));
}
template <class T>
static inline T emu_shfl_down_at(unsigned mask, T var, unsigned delta, int width, const char* f,
                                 int l) {
    const int lane = (int)emu_current->lane;
    const bool own = lane % width + (int)delta >= width;
    return emu_from_bits<T>(emu_shfl(mask, emu_bits<T>(var), own ? -1 : lane + (int)delta, f, l));
}
#define EMU_WIDTH(...) emu_width_(__VA_ARGS__ + 0)
static inline int emu_width_(int w) { return w ? w : 32; }
#define __shfl_sync(mask, var, src, ...) \
    emu_shfl_sync_at((mask), (var), (src), EMU_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, var, lm, ...) \
    emu_shfl_xor_at((mask), (var), (lm), EMU_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, var, d, ...) \
    emu_shfl_up_at((mask), (var), (d), EMU_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, var, d, ...) \
    emu_shfl_down_at((mask), (var), (d), EMU_WIDTH(__VA_ARGS__), __FILE__, __LINE__)

// ---- atomics. Fibers switch only at barriers and shuffles, and one block runs at a time, so a
// read-modify-write here cannot be interleaved with another CUDA thread's.
template <class T>
static inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
static inline T atomicSub(T* p, T v) {
    T old = *p;
    *p = old - v;
    return old;
}
template <class T>
static inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <class T>
static inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <class T>
static inline T atomicMin(T* p, T v) {
    T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <class T>
static inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

// ---- integer and bit intrinsics
static inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline float __int_as_float(int x) { return emu_from_bits<float>((unsigned)x); }
static inline int __float_as_int(float x) { return (int)emu_bits(x); }
static inline float __uint_as_float(unsigned x) { return emu_from_bits<float>(x); }
static inline unsigned __float_as_uint(float x) { return (unsigned)emu_bits(x); }
template <class T>
static inline T __ldg(const T* p) {
    return *p;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) {
    return a < b ? a : b;
}
static inline unsigned long long max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}

// ---- floating point. The emulator is compiled with -ffp-contract=off, so `a * b + c` rounds
// twice here; nvrtc contracts it into one FMA by default, which is why the kernels spell out
// the rounding (the _rn intrinsics) wherever the result must match the CPU bit for bit.
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
// __expf, __logf, __sinf, __cosf, __powf: glibc declares these very names (the float
// functions), which is what they are here.
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)std::floor(x); }
static inline unsigned __float2uint_rn(float x) { return (unsigned)std::nearbyint(x); }
