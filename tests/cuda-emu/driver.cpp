// The CUDA driver API as cudarc 0.19 calls it, on the CPU. A device pointer is the host address
// of its allocation (one heap allocation each, so AddressSanitizer sees every buffer's bounds);
// streams execute in order at once, except while capturing, when the work is recorded for a
// graph and replayed by cuGraphLaunch. cuBLAS and cuDNN calls are stream work too and are
// recorded the same way. What CUDA forbids while a stream captures (allocating or freeing
// memory, synchronous copies, copies between device and pageable host memory, waiting for the
// device) fails and invalidates the capture, so cuStreamEndCapture returns
// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, as on a GPU; a note on stderr names the call.
//
// Each device (device.cpp) has its own memory accounting: an allocation belongs to the device
// of the calling thread's current context. Kernels of all devices share the one block scheduler
// (block.cpp). Modules and error strings: module.cpp.
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "driver.h"

namespace emu {

State& st() {
    static State s;
    return s;
}

void note(const std::string& msg) { fprintf(stderr, "artgan cuda-emu: %s\n", msg.c_str()); }

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

CUresult sticky = CUDA_SUCCESS;  // see driver.h

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

// ---- for tests: counters of the emulated device (not part of the CUDA API); host waits are
// counted per calling thread.
EMU_EXPORT unsigned long long artgan_emu_host_syncs() { return t_host_syncs; }
EMU_EXPORT unsigned long long artgan_emu_launches() {
    std::lock_guard<std::mutex> lock(st().mu);
    return st().launches;
}
