// The CUDA driver's devices and contexts. Environment: ARTGAN_EMU_DEVICES (how many devices,
// default 1, at most 16), ARTGAN_EMU_MEMORY_MIB (capacity of each device, default 4096),
// ARTGAN_EMU_SMS (multiprocessor count, default 2: small grids, so the kernels' grid-stride
// loops iterate). Each device has its own primary context; the current context is per host
// thread, as in CUDA.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "driver.h"

namespace emu {

size_t env_size(const char* name, size_t dflt) {
    const char* v = getenv(name);
    if (!v || !*v) return dflt;
    char* end = nullptr;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || x == 0) {
        note(std::string(name) + "=" + v + " is not a positive integer; using the default");
        return dflt;
    }
    return (size_t)x;
}

}  // namespace emu

using namespace emu;

EMU_EXPORT CUresult cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    State& s = st();
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.initialised) {
        s.capacity = env_size("ARTGAN_EMU_MEMORY_MIB", 4096) << 20;
        s.devices = (int)env_size("ARTGAN_EMU_DEVICES", 1);
        if (s.devices > kMaxDevices) {
            note("ARTGAN_EMU_DEVICES=" + std::to_string(s.devices) + " is more than " +
                 std::to_string(kMaxDevices) + "; using " + std::to_string(kMaxDevices));
            s.devices = kMaxDevices;
        }
        s.sms = (int)env_size("ARTGAN_EMU_SMS", 2);
        s.initialised = true;
    }
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceGetCount(int* n) {
    CHECK_INIT();
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = st().devices;
    return CUDA_SUCCESS;
}

namespace emu {
bool valid_device(int dev) { return dev >= 0 && dev < st().devices; }
}  // namespace emu

EMU_EXPORT CUresult cuDeviceGet(int* dev, int ordinal) {
    CHECK_INIT();
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

static const char kDeviceName[] = "artgan emulated CUDA device (CPU, not a GPU)";

EMU_EXPORT CUresult cuDeviceGetName(char* name, int len, int dev) {
    CHECK_INIT();
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", kDeviceName);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    CHECK_INIT();
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = st().capacity;
    return CUDA_SUCCESS;
}

// Like a T4 (compute capability 7.5): the cubin sm_75 is what the loader picks.
EMU_EXPORT CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    CHECK_INIT();
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;          // MAX_THREADS_PER_BLOCK
        case 2: case 3: *v = 1024; break;  // MAX_BLOCK_DIM_X / Y
        case 4: *v = 64; break;            // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;    // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;
        case 8: *v = 49152; break;         // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: *v = 65536; break;         // TOTAL_CONSTANT_MEMORY
        case 10: *v = 32; break;           // WARP_SIZE
        case 12: *v = 65536; break;        // MAX_REGISTERS_PER_BLOCK
        case 13: *v = 1590000; break;      // CLOCK_RATE (kHz)
        case 16: *v = st().sms; break;     // MULTIPROCESSOR_COUNT
        case 39: *v = 1024; break;         // MAX_THREADS_PER_MULTIPROCESSOR
        case 41: *v = 1; break;            // UNIFIED_ADDRESSING
        case 75: *v = 7; break;            // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 5; break;            // COMPUTE_CAPABILITY_MINOR
        case 97: *v = 65536; break;        // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 1; break;           // MEMORY_POOLS_SUPPORTED: stream-ordered alloc/free
        default: *v = 0; break;            // no managed memory, ...
    }
    return CUDA_SUCCESS;
}

// ---- contexts: one primary context per device; "current" is per host thread, as in CUDA.
static int g_primary_ctx[kMaxDevices];
static thread_local void* t_current = nullptr;

namespace emu {
int current_device() {
    return t_current ? (int)(static_cast<int*>(t_current) - g_primary_ctx) : 0;
}
}  // namespace emu

EMU_EXPORT CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    CHECK_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &g_primary_ctx[dev];
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int dev) {
    return valid_device(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
EMU_EXPORT CUresult cuCtxSetCurrent(void* ctx) {
    auto* c = static_cast<int*>(ctx);
    if (c && (c < g_primary_ctx || c >= g_primary_ctx + st().devices))
        return CUDA_ERROR_INVALID_CONTEXT;
    t_current = ctx;
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuCtxGetCurrent(void** ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_current;
    return CUDA_SUCCESS;
}
