// Internal interface of the driver's parts (driver.cpp: memory, streams, graphs, launches;
// device.cpp: devices and contexts; module.cpp: modules, kernels by name, error strings).
#pragma once

#include <map>
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
State& st();

// A failed launch poisons the context, as on a GPU: every later call returns it.
extern int sticky;

// The value of environment variable `name`, a positive integer, or `dflt`.
size_t env_size(const char* name, size_t dflt);

}  // namespace emu

#define CHECK_INIT()                                              \
    do {                                                          \
        if (!st().initialised) return CUDA_ERROR_NOT_INITIALIZED; \
        if (sticky) return sticky;                                \
    } while (0)
