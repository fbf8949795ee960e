// The CUDA driver's modules (any image; a kernel resolves by name from the table of kernels the
// build generated) and its error strings.
#include <cctype>
#include <cstring>
#include <string>

#include "driver.h"

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

struct Module {
    std::string image;
};

}  // namespace emu

using namespace emu;

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
