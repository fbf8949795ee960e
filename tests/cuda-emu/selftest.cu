// Kernels for the emulator's own tests (tests/cuda_emu.rs), compiled into the emulated device
// only: each shows one thing the emulator must catch or get exactly right. Never built by nvrtc.
#include "common.cuh"

// out[0] = sum of x[0 .. blockDim.x) through shared memory; without the barrier thread 0 reads
// slots the other threads have not written yet.
extern "C" __global__ void emu_selftest_shared_sum(const float* x, int with_barrier, float* out) {
    __shared__ float tile[1024];
    tile[threadIdx.x] = x[threadIdx.x];
    if (with_barrier) __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (unsigned i = 0; i < blockDim.x; ++i) s += tile[i];
        out[0] = s;
    }
}

// The bits of shared memory that nobody wrote.
extern "C" __global__ void emu_selftest_shared_unwritten(unsigned* out) {
    __shared__ unsigned never_written[64];
    out[threadIdx.x] = never_written[threadIdx.x];
}

// Two barriers at different places: undefined on a GPU, an error here.
extern "C" __global__ void emu_selftest_divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// A full-warp shuffle after half the warp has returned: hangs on a GPU, an error here.
extern "C" __global__ void emu_selftest_shuffle_exited(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Every shuffle flavour with segments of `width` lanes: 4 results per thread.
extern "C" __global__ void emu_selftest_shuffles(int width, int* out) {
    const int v = (int)threadIdx.x * 10;
    int* o = out + 4 * threadIdx.x;
    o[0] = __shfl_sync(0xffffffffu, v, 3, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
    o[3] = __shfl_xor_sync(0xffffffffu, v, 5, width);
}

// block_sum (kernels/common.cuh) as our reductions use it: every thread gets the block's sum,
// twice in a row (the second call must not race the first over the shared partials).
extern "C" __global__ void emu_selftest_block_sum(const float* x, float* out) {
    const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    const float a = block_sum(v);
    const float b = block_sum(2.0f * v);
    out[2 * (blockIdx.x * blockDim.x + threadIdx.x)] = a;
    out[2 * (blockIdx.x * blockDim.x + threadIdx.x) + 1] = b;
}

// x[i] += 1 over [0, n): for graph capture and replay.
extern "C" __global__ void emu_selftest_add_one(float* x, u64 n) {
    GRID_STRIDE(i, n) x[i] += 1.0f;
}

// Writes one element past the end: AddressSanitizer must stop it (sanitizer build).
extern "C" __global__ void emu_selftest_write_past(float* x, u64 n) {
    if (threadIdx.x == 0) x[n] = 1.0f;
}
