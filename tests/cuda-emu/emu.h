// Internal interface of the emulated CUDA device: the kernel registry, the block scheduler and
// the device memory table shared by the driver, cuBLAS and cuDNN parts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace emu {

using Thunk = void (*)(void** params);

// One `extern "C" __global__` function of kernels/<module>.cu.
struct Kernel {
    const char* module;
    const char* name;
    Thunk thunk;
    std::vector<size_t> param_sizes;  // by value, in order (for argument copies in graphs)
    size_t param_bytes;               // with CUDA's natural alignment of each parameter
};

void register_kernel(Kernel k);
const Kernel* find_kernel(const char* name);

struct Dim3 {
    unsigned x, y, z;
};

// Runs every block of one launch. Returns "" or what went wrong (a deadlock, a divergent
// barrier, a shuffle over lanes that never arrive).
std::string run_grid(const Kernel& k, Dim3 grid, Dim3 block, void** params);

// Bytes of __shared__ memory the kernels declare (all of them: an upper bound per kernel).
size_t static_shared_bytes();

// Device memory: a device pointer is the host address of its allocation. Returns whether
// [p, p + bytes) lies inside one live allocation; `why` says otherwise.
bool device_range(const void* p, size_t bytes, std::string* why);

// The device of the allocation holding `p` (-1: not device memory).
int device_of(const void* p);

// Devices: whether `dev` is one, and the device of the calling thread's current context.
bool valid_device(int dev);
int current_device();

// Prints one line to stderr, prefixed so that an emulated result is never mistaken for a GPU's.
void note(const std::string& msg);

// For the libraries (cuBLAS, cuDNN), whose calls are stream work like a kernel launch: when
// `stream` is capturing, records `work` for the graph (`recorded`; the call returns success at
// once, as the library's does) or, when that capture was invalidated, records nothing
// (`invalidated`); otherwise `none`, and the caller runs the work now. `work` returns the
// library's status (0: success); a failure at replay fails the graph launch. `what` names the
// call in messages.
enum class Captured { none, recorded, invalidated };
Captured capture_library_call(void* stream, const char* what, std::function<int()> work);

// ---- the table of kernels, filled by the generated kernels_<module>.cpp files
template <class... A>
constexpr size_t param_bytes_of(void (*)(A...)) {
    size_t off = 0;
    ((off = (off + alignof(std::remove_cvref_t<A>) - 1) / alignof(std::remove_cvref_t<A>) *
                 alignof(std::remove_cvref_t<A>) +
             sizeof(std::remove_cvref_t<A>)),
     ...);
    return off;
}
template <class... A>
std::vector<size_t> param_sizes_of(void (*)(A...)) {
    return {sizeof(std::remove_cvref_t<A>)...};
}
template <class... A, size_t... I>
void call_unpacked(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cvref_t<A>*>(p[I])...);
}
template <class... A>
void call_with(void (*f)(A...), void** p) {
    call_unpacked(f, p, std::index_sequence_for<A...>{});
}
template <auto F>
void thunk(void** p) {
    call_with(F, p);
}
struct Registrar {
    Registrar(const char* module, const char* name, Thunk t, std::vector<size_t> sizes,
              size_t bytes) {
        register_kernel(Kernel{module, name, t, std::move(sizes), bytes});
    }
};

}  // namespace emu

#define EMU_KERNEL(module, name)                                                          \
    static emu::Registrar emu_reg_##name(#module, #name, &emu::thunk<&name>,              \
                                         emu::param_sizes_of(&name),                      \
                                         emu::param_bytes_of(&name));
