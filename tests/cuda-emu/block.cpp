// The block scheduler: every CUDA thread of a block is a fiber (its own stack, switched in user
// space), run in order until it finishes or waits at __syncthreads or a warp shuffle. A kernel
// without barriers therefore runs lane by lane to completion on one reused stack; one with
// barriers keeps a stack per waiting thread. A barrier releases when every live thread of the
// block has reached it at the same place; a shuffle when every lane of its mask has arrived.
// Anything else a GPU would hang on or leave undefined is an error with the place named.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "emu.h"
#include "shim.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define EMU_ASAN 0
#endif

emu_thread_ctx* emu_current = nullptr;

// Bounds of the section that holds every __shared__ variable (GNU ld defines these symbols for
// a section whose name is a C identifier). A dummy keeps the section present.
__attribute__((section("emu_shared"), used)) static char emu_shared_anchor[16];
extern "C" char __start_emu_shared[];
extern "C" char __stop_emu_shared[];

namespace emu {

size_t static_shared_bytes() {
    return (size_t)(__stop_emu_shared - __start_emu_shared) - sizeof emu_shared_anchor;
}

// ---- context switch (x86-64 System V): saves the callee-saved registers, MXCSR and the x87
// control word on the old stack, stores its stack pointer, loads the new one and returns there.
extern "C" void emu_switch(void** save_sp, void* load_sp);
__asm__(
    ".text\n"
    ".globl emu_switch\n"
    ".hidden emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n");

enum class State { NotStarted, Ready, AtBarrier, AtShuffle, Done };

// AddressSanitizer's larger frames need more room.
constexpr size_t kStack = EMU_ASAN ? (256 << 10) : (64 << 10);

struct Fiber {
    State state = State::NotStarted;
    emu_thread_ctx ctx{};
    void* sp = nullptr;
    char* stack = nullptr;
    const char* file = nullptr;  // where it waits
    int line = 0;
    unsigned shfl_mask = 0;
    int shfl_src = -1;
    unsigned long long shfl_value = 0, shfl_result = 0;
    void* asan_fake = nullptr;
};

struct Block {
    const Kernel* kernel = nullptr;
    void** params = nullptr;
    std::vector<Fiber> fibers;
    size_t live = 0;          // not Done
    size_t at_barrier = 0;
    std::vector<unsigned> shfl_arrived;  // per warp: lanes waiting at a shuffle
    std::string error;
    void* sched_sp = nullptr;
    Fiber* running = nullptr;
    const void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
    void* sched_fake = nullptr;
};

static Block g_block;
// One block of one kernel at a time in the whole process (see shim.h for why).
static std::mutex g_run;
static std::vector<char*> g_free_stacks;

static char* take_stack() {
    if (!g_free_stacks.empty()) {
        char* s = g_free_stacks.back();
        g_free_stacks.pop_back();
        return s;
    }
    // A guard page below the stack turns an overflow into a fault, not silent corruption.
    void* m = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        note("cannot map a fiber stack");
        abort();
    }
    mprotect(m, 4096, PROT_NONE);
    return static_cast<char*>(m) + 4096;
}

static void give_stack(char* s) {
#if EMU_ASAN
    // A fiber abandoned mid-kernel leaves its frames' redzones poisoned.
    __asan_unpoison_memory_region(s, kStack);
#endif
    g_free_stacks.push_back(s);
}

// Switches from the running fiber back to the scheduler (`finished`: never to return).
static void to_scheduler(bool finished) {
    Block& b = g_block;
    Fiber* f = b.running;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &f->asan_fake, b.sched_stack_bottom,
                                   b.sched_stack_size);
#else
    (void)finished;
#endif
    emu_switch(&f->sp, b.sched_sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, nullptr, nullptr);
#endif
}

static void fail(const std::string& what) {
    Block& b = g_block;
    if (b.error.empty()) b.error = what;
    to_scheduler(false);  // the scheduler abandons the block: this fiber never resumes
}

static std::string where(const Fiber& f) {
    char buf[160];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u) at %s:%d", f.ctx.thread_idx.x,
             f.ctx.thread_idx.y, f.ctx.thread_idx.z, f.file ? f.file : "?", f.line);
    return buf;
}

// Releases the barrier when every live thread waits at it.
static void maybe_release_barrier() {
    Block& b = g_block;
    if (b.at_barrier == 0 || b.at_barrier != b.live) return;
    const Fiber* first = nullptr;
    for (Fiber& f : b.fibers) {
        if (f.state != State::AtBarrier) continue;
        if (!first) {
            first = &f;
        } else if (f.line != first->line || strcmp(f.file, first->file) != 0) {
            b.error = "divergent __syncthreads: " + where(*first) + " and " + where(f);
            return;
        }
        f.state = State::Ready;
    }
    b.at_barrier = 0;
}

static void fiber_main() {
    Block& b = g_block;
    Fiber* f = b.running;
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
    b.kernel->thunk(b.params);
    f->state = State::Done;
    --b.live;
    // Lanes of this warp already waiting at a shuffle that names this lane would wait forever.
    const size_t base = (size_t)f->ctx.warp * 32;
    for (size_t l = 0; l < 32 && base + l < b.fibers.size(); ++l) {
        const Fiber& o = b.fibers[base + l];
        if (o.state == State::AtShuffle && (o.shfl_mask >> f->ctx.lane & 1u)) {
            b.error = "lane " + std::to_string(f->ctx.lane) +
                      " exited while its warp waits for it at a shuffle, which has exited: " +
                      where(o);
            break;
        }
    }
    // A thread that exits counts as arrived (as on the hardware); a lane that exits before a
    // shuffle that names it makes that shuffle wait forever, which the scheduler reports.
    maybe_release_barrier();
    to_scheduler(true);
    __builtin_unreachable();
}

// Initial frame for emu_switch: 8 bytes of MXCSR/x87 control, six registers, the "return
// address" fiber_main, and a zero above it so that fiber_main starts with the ABI's alignment.
static void* initial_sp(char* stack) {
    auto* top = reinterpret_cast<uint64_t*>(stack + kStack);
    *--top = 0;
    *--top = reinterpret_cast<uint64_t>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--top = 0;
    *--top = 0x037F00001F80ull;  // MXCSR default (low half), x87 control word (bytes 4-5)
    return top;
}

static void resume(Fiber& f) {
    Block& b = g_block;
    b.running = &f;
    emu_current = &f.ctx;
    f.state = State::Ready;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&b.sched_fake, f.stack, kStack);
#endif
    emu_switch(&b.sched_sp, f.sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(b.sched_fake, nullptr, nullptr);
#endif
    emu_current = nullptr;
    b.running = nullptr;
}

static std::string describe_stuck() {
    Block& b = g_block;
    std::string s;
    int shown = 0;
    for (Fiber& f : b.fibers) {
        if (f.state == State::Done) continue;
        if (shown++ == 4) {
            s += ", ...";
            break;
        }
        s += shown > 1 ? ", " : "";
        s += (f.state == State::AtBarrier ? "__syncthreads by " : "shuffle by ") + where(f);
    }
    return s;
}

static std::string run_block(Dim3 block_idx, Dim3 grid, Dim3 block) {
    Block& b = g_block;
    const size_t n = (size_t)block.x * block.y * block.z;
    b.fibers.assign(n, Fiber{});
    b.live = n;
    b.at_barrier = 0;
    b.shfl_arrived.assign((n + 31) / 32, 0);
    b.error.clear();
    for (size_t t = 0; t < n; ++t) {
        emu_thread_ctx& c = b.fibers[t].ctx;
        c.thread_idx = {(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                        (unsigned)(t / ((size_t)block.x * block.y))};
        c.block_idx = {block_idx.x, block_idx.y, block_idx.z};
        c.block_dim = {block.x, block.y, block.z};
        c.grid_dim = {grid.x, grid.y, grid.z};
        c.lane = (unsigned)(t % 32);
        c.warp = (unsigned)(t / 32);
    }
    // Shared memory starts as NaN bytes (0xFF.. is a NaN as f32 and f64, -1 as an integer).
    memset(__start_emu_shared, 0xFF, (size_t)(__stop_emu_shared - __start_emu_shared));
    // Warps run one at a time, each as far as it can go (to a block barrier or its end), in
    // ascending order on one pass and descending on the next: a legal GPU schedule in which one
    // warp runs ahead of the others, so a barrier that is missing between a warp's write to
    // shared memory and another warp's read of the old value shows up as a wrong result.
    const size_t warps = (n + 31) / 32;
    for (size_t pass = 0; b.live > 0 && b.error.empty(); ++pass) {
        bool progress = false;
        for (size_t k = 0; k < warps && b.error.empty(); ++k) {
            const size_t w = pass % 2 == 0 ? k : warps - 1 - k;
            const size_t end = std::min(n, (w + 1) * 32);
            for (bool warp_progress = true; warp_progress && b.error.empty();) {
                warp_progress = false;
                for (size_t t = w * 32; t < end && b.error.empty(); ++t) {
                    Fiber& f = b.fibers[t];
                    if (f.state == State::NotStarted) {
                        f.stack = take_stack();
                        f.sp = initial_sp(f.stack);
                    } else if (f.state != State::Ready) {
                        continue;
                    }
                    warp_progress = progress = true;
                    resume(f);
                    if (f.state == State::Done) {
                        give_stack(f.stack);
                        f.stack = nullptr;
                    }
                }
            }
        }
        if (!progress && b.error.empty()) b.error = "deadlock: " + describe_stuck();
    }
    for (Fiber& f : b.fibers)
        if (f.stack) give_stack(f.stack);
    return b.error;
}

std::string run_grid(const Kernel& k, Dim3 grid, Dim3 block, void** params) {
    std::lock_guard<std::mutex> lock(g_run);
    g_block.kernel = &k;
    g_block.params = params;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                std::string e = run_block({x, y, z}, grid, block);
                if (!e.empty()) {
                    char buf[96];
                    snprintf(buf, sizeof buf, "block (%u,%u,%u): ", x, y, z);
                    return buf + e;
                }
            }
    return "";
}

}  // namespace emu

using emu::g_block;
using emu::State;

extern "C" void emu_syncthreads(const char* file, int line) {
    emu::Fiber* f = g_block.running;
    f->file = file;
    f->line = line;
    f->state = State::AtBarrier;
    ++g_block.at_barrier;
    emu::maybe_release_barrier();
    emu::to_scheduler(false);
}

// All lanes of `mask` must reach the same shuffle; when the last arrives, every lane's result
// is taken from the values as they were then, so a lane that runs ahead cannot clobber them.
extern "C" unsigned long long emu_shfl(unsigned mask, unsigned long long v, int src,
                                       const char* file, int line) {
    emu::Block& b = g_block;
    emu::Fiber* f = b.running;
    const unsigned lane = f->ctx.lane, warp = f->ctx.warp;
    f->file = file;
    f->line = line;
    if (!(mask >> lane & 1u)) emu::fail("shuffle by a lane outside its own mask: " + emu::where(*f));
    if (src >= 0 && !(mask >> src & 1u))
        emu::fail("shuffle reads lane " + std::to_string(src) + ", which is not in the mask: " +
                  emu::where(*f));
    const size_t base = (size_t)warp * 32;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        if (base + l >= b.fibers.size())
            emu::fail("shuffle mask names lane " + std::to_string(l) +
                      ", beyond the block's threads: " + emu::where(*f));
        const emu::Fiber& o = b.fibers[base + l];
        if (o.state == State::Done)
            emu::fail("shuffle mask names lane " + std::to_string(l) + ", which has exited: " +
                      emu::where(*f));
        if (o.state == State::AtShuffle && (o.shfl_mask != mask || o.line != line))
            emu::fail("lanes of one warp at different shuffles: " + emu::where(o) + " and " +
                      emu::where(*f));
    }
    f->shfl_mask = mask;
    f->shfl_src = src;
    f->shfl_value = v;
    f->state = State::AtShuffle;
    unsigned& arrived = b.shfl_arrived[warp];
    arrived |= 1u << lane;
    if ((arrived & mask) == mask) {
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            emu::Fiber& o = b.fibers[base + l];
            o.shfl_result = o.shfl_src < 0 ? o.shfl_value : b.fibers[base + o.shfl_src].shfl_value;
            o.state = State::Ready;
        }
        arrived &= ~mask;
    }
    emu::to_scheduler(false);
    return f->shfl_result;
}

extern "C" void emu_syncwarp(unsigned mask, const char* file, int line) {
    emu_shfl(mask, 0, -1, file, line);
}
