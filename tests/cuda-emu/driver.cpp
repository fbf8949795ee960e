// The CUDA driver API as cudarc 0.19 calls it, on the CPU. A device pointer is the host address
// of its allocation (one heap allocation each, so AddressSanitizer sees every buffer's bounds);
// streams execute in order at once, except while capturing, when the work is recorded for a
// graph and replayed by cuGraphLaunch. cuBLAS and cuDNN calls are stream work too and are
// recorded the same way. What CUDA forbids while a stream captures (allocating or freeing
// memory, synchronous copies, copies between device and pageable host memory, waiting for the
// device) fails and invalidates the capture, so cuStreamEndCapture returns
// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, as on a GPU; a note on stderr names the call.
//
// Environment: ARTGAN_EMU_DEVICES (how many devices, default 1, at most 16),
// ARTGAN_EMU_MEMORY_MIB (capacity of each device, default 4096), ARTGAN_EMU_SMS (multiprocessor
// count, default 2: small grids, so the kernels' grid-stride loops iterate). Each device has its
// own primary context and memory accounting; an allocation belongs to the device of the calling
// thread's current context. Kernels of all devices share the one block scheduler (block.cpp).
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "emu.h"

using CUresult = int;
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace emu {

static std::vector<Kernel>& registry() {
    static std::vector<Kernel> r;
    return r;
}
void register_kernel(Kernel k) { registry().push_back(std::move(k)); }
const Kernel* find_kernel(const char* name) {
    for (const Kernel& k : registry())
        if (strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

void note(const std::string& msg) { fprintf(stderr, "artgan cuda-emu: %s\n", msg.c_str()); }

static size_t env_size(const char* name, size_t dflt) {
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

constexpr int kMaxDevices = 16;

struct Alloc {
    size_t bytes;
    int device;
};
struct State {
    std::mutex mu;
    bool initialised = false;
    int devices = 1;
    size_t capacity = 0;             // of each device
    size_t used[kMaxDevices] = {};   // per device
    std::map<uintptr_t, Alloc> allocs;  // start -> size and device
    int sms = 2;
    unsigned long long launches = 0;
};
static State& st() {
    static State s;
    return s;
}

bool device_range(const void* p, size_t bytes, std::string* why) {
    State& s = st();
    std::lock_guard<std::mutex> lock(s.mu);
    auto a = (uintptr_t)p;
    auto it = s.allocs.upper_bound(a);
    if (it == s.allocs.begin()) {
        if (why) *why = "address is not device memory";
        return false;
    }
    --it;
    if (a + bytes > it->first + it->second.bytes) {
        if (why) {
            char buf[160];
            snprintf(buf, sizeof buf,
                     "%zu bytes at offset %zu run past the end of a %zu-byte allocation", bytes,
                     (size_t)(a - it->first), it->second.bytes);
            *why = a >= it->first + it->second.bytes ? "address is not device memory" : buf;
        }
        return false;
    }
    return true;
}

int device_of(const void* p) {
    State& s = st();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.allocs.upper_bound((uintptr_t)p);
    if (it == s.allocs.begin()) return -1;
    --it;
    return (uintptr_t)p < it->first + it->second.bytes ? it->second.device : -1;
}

// ---- streams, capture and graphs
struct Stream {
    bool capturing = false;
    bool capture_broken = false;
    std::vector<std::function<CUresult()>> captured;
};
// The streams this host thread is capturing (capture mode THREAD_LOCAL or GLOBAL: a forbidden
// call by the capturing thread invalidates its captures; other threads, other tests, are not
// affected).
static thread_local std::vector<Stream*> t_capturing;

static void invalidate(Stream* s, const std::string& why) {
    if (!s->capture_broken)
        note("stream capture invalidated by " + why + " (not allowed while capturing)");
    s->capture_broken = true;
    s->captured.clear();
}

// For a call CUDA forbids while this thread captures: invalidates its captures and returns the
// error the call fails with; CUDA_SUCCESS when nothing is capturing.
static CUresult forbidden_while_capturing(const std::string& what) {
    if (t_capturing.empty()) return CUDA_SUCCESS;
    for (Stream* s : t_capturing) invalidate(s, what);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

// For a call on `stream` that a capture cannot record: invalidates that capture.
static CUresult not_capturable(void* stream, const std::string& what) {
    auto* s = static_cast<Stream*>(stream);
    if (!s || !s->capturing) return CUDA_SUCCESS;
    invalidate(s, what);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}
struct Graph {
    std::vector<std::function<CUresult()>> work;
};
struct Event {
    std::chrono::steady_clock::time_point at;
};
struct Module {
    std::string image;
};

// Runs `work` now, or records it when the stream is capturing.
static CUresult submit(void* stream, std::function<CUresult()> work) {
    auto* s = static_cast<Stream*>(stream);
    if (s && s->capturing) {
        if (s->capture_broken) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        s->captured.push_back(std::move(work));
        return CUDA_SUCCESS;
    }
    return work();
}

static CUresult sticky = CUDA_SUCCESS;  // a failed launch poisons the context, as on a GPU

Captured capture_library_call(void* stream, const char* what, std::function<int()> work) {
    auto* s = static_cast<Stream*>(stream);
    if (!s || !s->capturing) return Captured::none;
    if (s->capture_broken) return Captured::invalidated;
    std::string name = what;
    s->captured.push_back([work = std::move(work), name]() -> CUresult {
        if (work() == 0) return CUDA_SUCCESS;
        note(name + " failed in a graph launch");
        sticky = CUDA_ERROR_LAUNCH_FAILED;
        return sticky;
    });
    return Captured::recorded;
}

// Calls by this host thread that made it wait for the device (synchronize, copies to the host).
// Per thread, like artgan's backends, so that concurrent tests do not count each other's.
static thread_local unsigned long long t_host_syncs = 0;

}  // namespace emu

using namespace emu;

#define CHECK_INIT()                                              \
    do {                                                          \
        if (!st().initialised) return CUDA_ERROR_NOT_INITIALIZED; \
        if (sticky) return sticky;                                \
    } while (0)

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
EMU_EXPORT CUresult cuCtxSynchronize() {
    CHECK_INIT();
    if (CUresult r = forbidden_while_capturing("cuCtxSynchronize")) return r;
    ++t_host_syncs;
    return CUDA_SUCCESS;
}

// ---- memory
EMU_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    CHECK_INIT();
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    State& s = st();
    std::lock_guard<std::mutex> lock(s.mu);
    *free_bytes = s.capacity - s.used[current_device()];
    *total = s.capacity;
    return CUDA_SUCCESS;
}

static CUresult mem_alloc(uintptr_t* dptr, size_t bytes) {
    CHECK_INIT();
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    State& s = st();
    const int dev = current_device();
    {
        std::lock_guard<std::mutex> lock(s.mu);
        if (bytes > s.capacity - s.used[dev]) return CUDA_ERROR_OUT_OF_MEMORY;
        s.used[dev] += bytes;
    }
    // Exactly `bytes` (no rounding up), so that AddressSanitizer flags the first byte past it.
    void* p = malloc(bytes);
    std::lock_guard<std::mutex> lock(s.mu);
    if (!p) {
        s.used[dev] -= bytes;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    s.allocs[(uintptr_t)p] = Alloc{bytes, dev};
    *dptr = (uintptr_t)p;
    return CUDA_SUCCESS;
}

static CUresult mem_free(uintptr_t dptr) {
    CHECK_INIT();
    State& s = st();
    {
        std::lock_guard<std::mutex> lock(s.mu);
        auto it = s.allocs.find(dptr);
        if (it == s.allocs.end()) return CUDA_ERROR_INVALID_VALUE;
        s.used[it->second.device] -= it->second.bytes;
        s.allocs.erase(it);
    }
    free((void*)dptr);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemAlloc_v2(uintptr_t* dptr, size_t bytes) {
    if (CUresult r = forbidden_while_capturing("cuMemAlloc")) return r;
    return mem_alloc(dptr, bytes);
}
EMU_EXPORT CUresult cuMemFree_v2(uintptr_t dptr) {
    if (CUresult r = forbidden_while_capturing("cuMemFree")) return r;
    return mem_free(dptr);
}
// Stream-ordered allocation on a capturing stream would become a graph memory node on a GPU,
// memory that belongs to the graph and is invalid outside its launches; a caching allocator
// must never keep such a buffer, so the emulator refuses it (stricter than CUDA): captured
// steps allocate nothing.
EMU_EXPORT CUresult cuMemAllocAsync(uintptr_t* dptr, size_t bytes, void* stream) {
    if (CUresult r = not_capturable(stream, "cuMemAllocAsync (a graph-owned allocation)"))
        return r;
    return mem_alloc(dptr, bytes);
}
EMU_EXPORT CUresult cuMemFreeAsync(uintptr_t dptr, void* stream) {
    if (CUresult r = not_capturable(stream, "cuMemFreeAsync (a graph-owned free)")) return r;
    return mem_free(dptr);
}

static CUresult check_device(const void* p, size_t bytes, const char* what) {
    std::string why;
    if (bytes == 0 || device_range(p, bytes, &why)) return CUDA_SUCCESS;
    note(std::string(what) + ": " + why);
    return CUDA_ERROR_INVALID_VALUE;
}

static CUresult copy(void* dst, const void* src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuMemcpyHtoDAsync_v2(uintptr_t dst, const void* src, size_t bytes,
                                         void* stream) {
    CHECK_INIT();
    if (CUresult r = check_device((void*)dst, bytes, "cuMemcpyHtoD destination")) return r;
    // The emulator has no page-locked host memory, and a copy from pageable memory cannot be
    // captured: its source would be read at every replay from wherever it was then.
    if (CUresult r = not_capturable(stream, "cuMemcpyHtoDAsync (from pageable host memory)"))
        return r;
    return submit(stream, [=]() -> CUresult { return copy((void*)dst, src, bytes); });
}
EMU_EXPORT CUresult cuMemcpyHtoD_v2(uintptr_t dst, const void* src, size_t bytes) {
    if (CUresult r = forbidden_while_capturing("cuMemcpyHtoD (synchronous)")) return r;
    return cuMemcpyHtoDAsync_v2(dst, src, bytes, nullptr);
}
EMU_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, uintptr_t src, size_t bytes, void* stream) {
    CHECK_INIT();
    if (CUresult r = check_device((void*)src, bytes, "cuMemcpyDtoH source")) return r;
    // A host read inside a captured step: not capturable into pageable memory.
    if (CUresult r = not_capturable(stream, "cuMemcpyDtoHAsync (to pageable host memory)"))
        return r;
    return submit(stream, [=]() -> CUresult { return copy(dst, (void*)src, bytes); });
}
EMU_EXPORT CUresult cuMemcpyDtoH_v2(void* dst, uintptr_t src, size_t bytes) {
    if (CUresult r = forbidden_while_capturing("cuMemcpyDtoH (synchronous)")) return r;
    ++t_host_syncs;
    return cuMemcpyDtoHAsync_v2(dst, src, bytes, nullptr);
}
EMU_EXPORT CUresult cuMemcpyDtoDAsync_v2(uintptr_t dst, uintptr_t src, size_t bytes,
                                         void* stream) {
    CHECK_INIT();
    if (CUresult r = check_device((void*)dst, bytes, "cuMemcpyDtoD destination")) return r;
    if (CUresult r = check_device((void*)src, bytes, "cuMemcpyDtoD source")) return r;
    return submit(stream, [=]() -> CUresult { return copy((void*)dst, (void*)src, bytes); });
}
EMU_EXPORT CUresult cuMemcpyDtoD_v2(uintptr_t dst, uintptr_t src, size_t bytes) {
    if (CUresult r = forbidden_while_capturing("cuMemcpyDtoD (synchronous)")) return r;
    return cuMemcpyDtoDAsync_v2(dst, src, bytes, nullptr);
}
EMU_EXPORT CUresult cuMemsetD8Async(uintptr_t dst, unsigned char v, size_t n, void* stream) {
    CHECK_INIT();
    if (CUresult r = check_device((void*)dst, n, "cuMemsetD8 destination")) return r;
    return submit(stream, [=]() -> CUresult {
        memset((void*)dst, v, n);
        return CUDA_SUCCESS;
    });
}
EMU_EXPORT CUresult cuMemsetD8_v2(uintptr_t dst, unsigned char v, size_t n) {
    if (CUresult r = forbidden_while_capturing("cuMemsetD8 (synchronous)")) return r;
    return cuMemsetD8Async(dst, v, n, nullptr);
}
EMU_EXPORT CUresult cuMemsetD32Async(uintptr_t dst, unsigned v, size_t n, void* stream) {
    CHECK_INIT();
    if (CUresult r = check_device((void*)dst, n * 4, "cuMemsetD32 destination")) return r;
    return submit(stream, [=]() -> CUresult {
        for (size_t i = 0; i < n; ++i) memcpy((char*)dst + 4 * i, &v, 4);
        return CUDA_SUCCESS;
    });
}
EMU_EXPORT CUresult cuMemsetD32_v2(uintptr_t dst, unsigned v, size_t n) {
    if (CUresult r = forbidden_while_capturing("cuMemsetD32 (synchronous)")) return r;
    return cuMemsetD32Async(dst, v, n, nullptr);
}

// ---- streams and events
EMU_EXPORT CUresult cuStreamCreate(void** stream, unsigned) {
    CHECK_INIT();
    if (!stream) return CUDA_ERROR_INVALID_VALUE;
    *stream = new Stream;
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuStreamCreateWithPriority(void** stream, unsigned flags, int) {
    return cuStreamCreate(stream, flags);
}
EMU_EXPORT CUresult cuStreamDestroy_v2(void* stream) {
    std::erase(t_capturing, static_cast<Stream*>(stream));
    delete static_cast<Stream*>(stream);
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuStreamSynchronize(void* stream) {
    CHECK_INIT();
    auto* s = static_cast<Stream*>(stream);
    if (CUresult r = not_capturable(s, "cuStreamSynchronize")) return r;
    ++t_host_syncs;
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuStreamQuery(void* stream) {
    CHECK_INIT();
    if (CUresult r = not_capturable(stream, "cuStreamQuery")) return r;
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuStreamWaitEvent(void*, void*, unsigned) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuEventCreate(void** ev, unsigned) {
    CHECK_INIT();
    if (!ev) return CUDA_ERROR_INVALID_VALUE;
    *ev = new Event{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuEventDestroy_v2(void* ev) {
    delete static_cast<Event*>(ev);
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuEventRecord(void* ev, void* stream) {
    CHECK_INIT();
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    return submit(stream, [=]() -> CUresult {
        static_cast<Event*>(ev)->at = std::chrono::steady_clock::now();
        return CUDA_SUCCESS;
    });
}
EMU_EXPORT CUresult cuEventRecordWithFlags(void* ev, void* stream, unsigned) {
    return cuEventRecord(ev, stream);
}
EMU_EXPORT CUresult cuEventSynchronize(void* ev) {
    CHECK_INIT();
    if (!ev) return CUDA_ERROR_INVALID_HANDLE;
    if (CUresult r = forbidden_while_capturing("cuEventSynchronize")) return r;
    ++t_host_syncs;
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuEventQuery(void* ev) {
    CHECK_INIT();
    return ev ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
EMU_EXPORT CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    CHECK_INIT();
    if (!ms || !start || !end) return CUDA_ERROR_INVALID_HANDLE;
    auto d = static_cast<Event*>(end)->at - static_cast<Event*>(start)->at;
    *ms = std::chrono::duration<float, std::milli>(d).count();
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

EMU_EXPORT CUresult cuStreamBeginCapture_v2(void* stream, int) {
    CHECK_INIT();
    auto* s = static_cast<Stream*>(stream);
    if (!s) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;  // not the legacy stream
    if (s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
    s->capturing = true;
    s->capture_broken = false;
    s->captured.clear();
    t_capturing.push_back(s);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamIsCapturing(void* stream, int* status) {
    CHECK_INIT();
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    auto* s = static_cast<Stream*>(stream);
    *status = s && s->capturing ? (s->capture_broken ? 2 : 1) : 0;
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuStreamEndCapture(void* stream, void** graph) {
    CHECK_INIT();
    auto* s = static_cast<Stream*>(stream);
    if (!s || !graph) return CUDA_ERROR_INVALID_VALUE;
    if (!s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
    s->capturing = false;
    std::erase(t_capturing, s);
    if (s->capture_broken) {
        s->captured.clear();
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = new Graph{std::move(s->captured)};
    s->captured.clear();
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    CHECK_INIT();
    if (!exec || !graph) return CUDA_ERROR_INVALID_VALUE;
    *exec = new Graph(*static_cast<Graph*>(graph));
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuGraphLaunch(void* exec, void* stream) {
    CHECK_INIT();
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    auto* g = static_cast<Graph*>(exec);
    return submit(stream, [g]() -> CUresult {
        for (auto& w : g->work)
            if (CUresult r = w()) return r;
        return CUDA_SUCCESS;
    });
}
EMU_EXPORT CUresult cuGraphUpload(void*, void*) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuGraphDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuGraphExecDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}

// ---- modules. Any image is accepted (PTX text, a cubin, or the source when the backend
// compiled it itself); a kernel name resolves when the image names it and the emulator
// compiled that kernel from kernels/*.cu, and fails with NOT_FOUND otherwise, like the driver.
static size_t image_size(const void* image) {
    const auto* b = static_cast<const unsigned char*>(image);
    if (memcmp(b, "\x7f"
                  "ELF",
               4) == 0 && b[4] == 2) {
        uint64_t shoff;
        uint16_t shentsize, shnum;
        memcpy(&shoff, b + 0x28, 8);
        memcpy(&shentsize, b + 0x3A, 2);
        memcpy(&shnum, b + 0x3C, 2);
        return shoff + (size_t)shentsize * shnum;
    }
    return strlen(static_cast<const char*>(image));
}

EMU_EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
    CHECK_INIT();
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    size_t n = image_size(image);
    if (n == 0) return CUDA_ERROR_INVALID_IMAGE;
    *module = new Module{std::string(static_cast<const char*>(image), n)};
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned, void*, void*) {
    return cuModuleLoadData(module, image);
}
EMU_EXPORT CUresult cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return CUDA_SUCCESS;
}

static bool names_kernel(const std::string& image, const char* name) {
    // A whole identifier: `.entry name(` in PTX, `name\0` in a cubin's string table,
    // `void name(` in source.
    const size_t len = strlen(name);
    for (size_t at = image.find(name); at != std::string::npos; at = image.find(name, at + 1)) {
        auto ident = [](char c) { return isalnum((unsigned char)c) || c == '_'; };
        bool before = at == 0 || !ident(image[at - 1]);
        bool after = at + len >= image.size() || !ident(image[at + len]);
        if (before && after) return true;
    }
    return false;
}

EMU_EXPORT CUresult cuModuleGetFunction(void** func, void* module, const char* name) {
    CHECK_INIT();
    if (!func || !module || !name) return CUDA_ERROR_INVALID_VALUE;
    const Kernel* k = find_kernel(name);
    if (!k || !names_kernel(static_cast<Module*>(module)->image, name)) return CUDA_ERROR_NOT_FOUND;
    *func = const_cast<Kernel*>(k);
    return CUDA_SUCCESS;
}

EMU_EXPORT CUresult cuFuncGetAttribute(int* v, int attr, void* func) {
    CHECK_INIT();
    if (!v || !func) return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
        case 0: *v = 1024; break;                         // MAX_THREADS_PER_BLOCK
        case 1: *v = (int)static_shared_bytes(); break;  // SHARED_SIZE_BYTES
        case 4: *v = 32; break;                           // NUM_REGS
        case 5: *v = 75; break;                           // PTX_VERSION
        case 6: *v = 75; break;                           // BINARY_VERSION
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
EMU_EXPORT CUresult cuFuncSetAttribute(void*, int, int) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}

// Checks a launch like the hardware does, copies the arguments (a graph replays them later, as
// CUDA copies them at capture), and runs or records it.
EMU_EXPORT CUresult cuLaunchKernel(void* func, unsigned gx, unsigned gy, unsigned gz,
                                   unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes,
                                   void* stream, void** params, void** extra) {
    CHECK_INIT();
    auto* k = static_cast<const Kernel*>(func);
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    auto bad = [&](const char* why) {
        char buf[256];
        snprintf(buf, sizeof buf, "launch of %s with grid (%u,%u,%u) block (%u,%u,%u): %s",
                 k->name, gx, gy, gz, bx, by, bz, why);
        note(buf);
        return CUDA_ERROR_INVALID_VALUE;
    };
    if (extra) return bad("the `extra` argument form is not emulated");
    if (!gx || !gy || !gz || !bx || !by || !bz) return bad("a zero dimension");
    if (gy > 65535 || gz > 65535 || gx > 2147483647u) return bad("grid too large");
    if (bx > 1024 || by > 1024 || bz > 64 || (unsigned long long)bx * by * bz > 1024)
        return bad("more than 1024 threads per block");
    if (shared_bytes) return bad("dynamic shared memory is not emulated");
    if (static_shared_bytes() > 49152) return bad("more than 48 KiB of static shared memory");
    if (k->param_bytes > 4096) return bad("more than 4 KiB of kernel parameters");
    if (!params && !k->param_sizes.empty()) return bad("no kernel parameters given");
    // Copy every argument now, so that the caller's storage may change after the call.
    auto args = std::make_shared<std::vector<std::vector<char>>>();
    for (size_t i = 0; i < k->param_sizes.size(); ++i) {
        const char* p = static_cast<const char*>(params[i]);
        args->emplace_back(p, p + k->param_sizes[i]);
    }
    {
        std::lock_guard<std::mutex> lock(st().mu);
        ++st().launches;
    }
    Dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return submit(stream, [k, grid, block, args]() -> CUresult {
        std::vector<void*> ptrs;
        for (auto& a : *args) ptrs.push_back(a.data());
        std::string err = run_grid(*k, grid, block, ptrs.data());
        if (err.empty()) return CUDA_SUCCESS;
        note(std::string("kernel ") + k->name + ": " + err);
        sticky = CUDA_ERROR_LAUNCH_FAILED;
        return sticky;
    });
}

// ---- errors
static const char* error_name(int e) {
    switch (e) {
        case CUDA_SUCCESS: return "CUDA_SUCCESS";
        case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
        case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
        default: return nullptr;
    }
}
static const char* error_text(int e) {
    switch (e) {
        case CUDA_SUCCESS: return "no error";
        case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
        case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory (emulated device capacity)";
        case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
        case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
        case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure (emulated: see stderr)";
        default: return error_name(e);
    }
}
EMU_EXPORT CUresult cuGetErrorName(int e, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(e);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
EMU_EXPORT CUresult cuGetErrorString(int e, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_text(e);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- for tests: counters of the emulated device (not part of the CUDA API); host waits are
// counted per calling thread.
EMU_EXPORT unsigned long long artgan_emu_host_syncs() { return t_host_syncs; }
EMU_EXPORT unsigned long long artgan_emu_launches() {
    std::lock_guard<std::mutex> lock(st().mu);
    return st().launches;
}
