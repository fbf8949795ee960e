// NCCL (the calls src/backend/cuda/collective.rs makes, and their siblings) on the emulated
// devices, answering to libnccl.so.2. Every rank is a host thread of this process with its own
// communicator; a collective is stream work like a kernel launch: it runs when its stream runs
// it (at once, or at graph replay when captured, see emu::capture_library_call), and there it
// meets the same collective of the other ranks (a rendezvous per sequence number of the
// communicator). The last rank to arrive checks that all asked the same thing and does the
// work for all, reducing in rank order (deterministic).
//
// What a GPU would do silently wrong or hang on is an error here, for every rank, with one line
// on stderr: ranks that disagree (count, datatype, operation, root, or a different collective at
// the same sequence number) get ncclInvalidUsage and the line names each rank and what it asked;
// ranks left waiting longer than ARTGAN_EMU_NCCL_TIMEOUT_MS (default 20000) for one that never
// arrives get ncclSystemError: "deadlock: ranks [..] waited N ms at <call> #k for ranks [..]".
// ncclGetLastError gives the calling thread's last such message. ncclCommAbort (from any
// thread) releases its rank from a collective it waits in, as NCCL's abort flag releases the
// waiting kernel; any later use of that communicator (a collective, a destroy, a second abort:
// freed memory on a GPU) is an error.
//
// Not emulated (an error says so): several communicators in one group (one thread driving
// several GPUs), point-to-point calls, reduce/all-gather/reduce-scatter, integer datatypes.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unistd.h>
#include <vector>

#include "emu.h"

using ncclResult_t = int;
enum : int {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
};
struct ncclUniqueId {
    char internal[128];
};

namespace {

using emu::note;

const char kMagic[] = "artgan-emu-nccl";  // the start of every unique id this library makes

enum class Kind { all_reduce, broadcast };
struct Op {
    Kind kind;
    const void* send;
    void* recv;
    size_t count;
    int dtype;
    int redop;  // all-reduce
    int root;   // broadcast
};

struct Round {
    std::vector<std::vector<Op>> calls;  // per rank, once it arrived
    std::vector<bool> arrived;
    int arrivals = 0;
    int left = 0;
    bool done = false;
    std::string error;
    int code = ncclSuccess;
};

struct Clique {
    int nranks = 0;
    std::vector<bool> joined;
    int joins = 0;
    int live = 0;            // communicators not destroyed yet
    int aborts = 0;          // communicators aborted (the clique is then kept)
    std::string init_error;  // a failed rendezvous of ncclCommInitRank
    std::vector<unsigned long long> next;  // per rank: sequence number of its next collective
    std::map<unsigned long long, Round> rounds;
};

struct Comm {
    std::string key;  // of its clique
    Clique* clique;
    int rank;
    int device;
    // Set by ncclCommAbort. An aborted communicator (and its clique) is kept, not freed, so
    // that a rank waiting in it is released and a later use is reported, not undefined.
    bool aborted = false;
};

// One lock for every communicator: the emulator runs kernels one block at a time anyway.
std::mutex g_mu;
std::condition_variable g_cv;
std::map<std::string, std::unique_ptr<Clique>> g_cliques;  // by unique id

thread_local std::string t_last_error;

ncclResult_t fail(ncclResult_t code, const std::string& msg, bool print = true) {
    t_last_error = msg;
    if (print) note("nccl: " + msg);
    return code;
}

std::chrono::milliseconds timeout() {
    const char* v = getenv("ARTGAN_EMU_NCCL_TIMEOUT_MS");
    long long ms = v && *v ? atoll(v) : 0;
    return std::chrono::milliseconds(ms > 0 ? ms : 20000);
}

std::string rank_list(const std::vector<int>& ranks) {
    std::string s = "[";
    for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
    return s + "]";
}

const char* dtype_name(int t) {
    switch (t) {
        case 6: return "float16";
        case 7: return "float32";
        case 8: return "float64";
        default: return nullptr;
    }
}
size_t dtype_size(int t) { return t == 6 ? 2 : t == 7 ? 4 : 8; }
const char* redop_name(int op) {
    static const char* names[] = {"sum", "prod", "max", "min", "avg"};
    return op >= 0 && op < 5 ? names[op] : "?";
}
const char* call_name(Kind k) { return k == Kind::all_reduce ? "ncclAllReduce" : "ncclBroadcast"; }

std::string describe(const Op& op) {
    char buf[160];
    if (op.kind == Kind::all_reduce)
        snprintf(buf, sizeof buf, "ncclAllReduce(count %zu, %s, %s)", op.count,
                 dtype_name(op.dtype), redop_name(op.redop));
    else
        snprintf(buf, sizeof buf, "ncclBroadcast(count %zu, %s, root %d)", op.count,
                 dtype_name(op.dtype), op.root);
    return buf;
}
std::string describe(const std::vector<Op>& ops) {
    if (ops.size() == 1) return describe(ops[0]);
    std::string s = "a group of " + std::to_string(ops.size()) + " [";
    for (size_t i = 0; i < ops.size(); ++i) s += (i ? ", " : "") + describe(ops[i]);
    return s + "]";
}
// How the waiting ranks' call is named in a deadlock: "ncclAllReduce" or
// "a group of 3 (ncclAllReduce first)".
std::string call_of(const std::vector<Op>& ops) {
    if (ops.size() == 1) return call_name(ops[0].kind);
    return "a group of " + std::to_string(ops.size()) + " (" + call_name(ops[0].kind) + " first)";
}

bool same(const Op& a, const Op& b) {
    return a.kind == b.kind && a.count == b.count && a.dtype == b.dtype &&
           (a.kind == Kind::all_reduce ? a.redop == b.redop : a.root == b.root);
}

// ---- the arithmetic: every step rounded to the element type, as NCCL's kernels do.
using half = _Float16;
template <class T> using Wide = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
void all_reduce(const std::vector<const void*>& in, const std::vector<void*>& out, size_t n,
                int op) {
    std::vector<T> acc(static_cast<const T*>(in[0]), static_cast<const T*>(in[0]) + n);
    for (size_t r = 1; r < in.size(); ++r) {
        const T* x = static_cast<const T*>(in[r]);
        for (size_t i = 0; i < n; ++i) {
            Wide<T> a = acc[i], b = x[i];
            switch (op) {
                case 1: acc[i] = (T)(a * b); break;
                case 2: acc[i] = (T)(b > a ? b : a); break;
                case 3: acc[i] = (T)(b < a ? b : a); break;
                default: acc[i] = (T)(a + b); break;  // sum, avg
            }
        }
    }
    if (op == 4)
        for (T& v : acc) v = (T)((Wide<T>)v / (Wide<T>)in.size());
    for (void* o : out) memcpy(o, acc.data(), n * sizeof(T));
}

// Runs round `k`'s work for every rank (all have arrived and agree).
void execute(const Round& round) {
    const size_t nranks = round.calls.size();
    for (size_t i = 0; i < round.calls[0].size(); ++i) {
        const Op& op = round.calls[0][i];
        std::vector<const void*> in;
        std::vector<void*> out;
        for (size_t r = 0; r < nranks; ++r) {
            in.push_back(round.calls[r][i].send);
            out.push_back(round.calls[r][i].recv);
        }
        if (op.count == 0) continue;
        if (op.kind == Kind::broadcast) {
            const void* src = in[op.root];
            for (void* o : out)
                if (o != src) memcpy(o, src, op.count * dtype_size(op.dtype));
            continue;
        }
        switch (op.dtype) {
            case 6: all_reduce<half>(in, out, op.count, op.redop); break;
            case 7: all_reduce<float>(in, out, op.count, op.redop); break;
            default: all_reduce<double>(in, out, op.count, op.redop); break;
        }
    }
}

// Why the arrived calls of `round` cannot run together, or "".
std::string disagreement(const Round& round, unsigned long long k) {
    const auto& first = round.calls[0];
    std::vector<int> ranks{0};
    for (size_t r = 1; r < round.calls.size(); ++r) {
        const auto& c = round.calls[r];
        bool ok = c.size() == first.size();
        for (size_t i = 0; ok && i < c.size(); ++i) ok = same(c[i], first[i]);
        if (!ok) ranks.push_back((int)r);
    }
    if (ranks.size() == 1) return "";
    std::string msg = "ranks " + rank_list(ranks) + " disagree at collective #" +
                      std::to_string(k + 1) + ":";
    for (int r : ranks) msg += (r ? "; rank " : " rank ") + std::to_string(r) + " asked " +
                               describe(round.calls[r]);
    return msg;
}

// The rendezvous of one collective (a single call or one group) of `comm`, run in its
// stream's order. Blocks until every rank arrived (or the timeout).
ncclResult_t rendezvous(Comm* comm, const std::vector<Op>& ops) {
    Clique& c = *comm->clique;
    const int r = comm->rank;
    const auto started = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lk(g_mu);
    if (comm->aborted)
        return fail(ncclInvalidUsage, "rank " + std::to_string(r) + ": " + call_of(ops) +
                                          " on an aborted communicator (after ncclCommAbort "
                                          "it is freed memory on a GPU)");
    const unsigned long long k = c.next[r]++;
    Round& round = c.rounds[k];
    if (round.arrived.empty()) {
        round.arrived.assign(c.nranks, false);
        round.calls.resize(c.nranks);
    }
    round.calls[r] = ops;
    round.arrived[r] = true;
    ++round.arrivals;
    bool print = false;  // the rank that finds the problem prints it, once
    if (!round.done && round.arrivals == c.nranks) {
        round.error = disagreement(round, k);
        if (round.error.empty()) execute(round);
        else round.code = ncclInvalidUsage;
        round.done = true;
        print = !round.error.empty();
        g_cv.notify_all();
    } else if (!g_cv.wait_until(lk, started + timeout(),
                                [&] { return round.done || comm->aborted; })) {
        std::vector<int> waiting, missing;
        for (int i = 0; i < c.nranks; ++i) (round.arrived[i] ? waiting : missing).push_back(i);
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started).count();
        round.error = "deadlock: ranks " + rank_list(waiting) + " waited " +
                      std::to_string(ms) + " ms at " + call_of(ops) + " #" +
                      std::to_string(k + 1) + " for ranks " + rank_list(missing);
        round.code = ncclSystemError;
        round.done = true;
        print = true;
        g_cv.notify_all();
    }
    if (!round.done) {  // released by ncclCommAbort, as a GPU's waiting kernel would be
        return fail(ncclSystemError, "rank " + std::to_string(r) + ": " + call_of(ops) + " #" +
                                         std::to_string(k + 1) +
                                         " ended by ncclCommAbort while it waited for ranks",
                    false);
    }
    const std::string error = round.error;
    const int code = round.code;
    if (++round.left == c.nranks) c.rounds.erase(k);
    lk.unlock();
    return error.empty() ? ncclSuccess : fail(code, error, print);
}

// Queues one collective on `stream`: runs it now, or records it when the stream captures.
ncclResult_t enqueue(Comm* comm, void* stream, std::vector<Op> ops) {
    std::string what = call_of(ops);
    auto work = [comm, ops = std::move(ops)]() -> int { return rendezvous(comm, ops); };
    switch (emu::capture_library_call(stream, what.c_str(), work)) {
        case emu::Captured::recorded: return ncclSuccess;
        case emu::Captured::invalidated:
            return fail(ncclInvalidUsage, what + " on a stream whose capture was invalidated");
        case emu::Captured::none: break;
    }
    return work();
}

// ---- groups (per host thread, as in NCCL)
struct Pending {
    Comm* comm;
    void* stream;
    Op op;
};
thread_local int t_group_depth = 0;
thread_local std::vector<Pending> t_group;
thread_local bool t_group_failed = false;

std::string buffer_problem(const Comm* comm, const void* p, size_t bytes, const char* which) {
    std::string why;
    if (!emu::device_range(p, bytes, &why)) return std::string(which) + ": " + why;
    int dev = emu::device_of(p);
    if (dev != comm->device)
        return std::string(which) + " is memory of device " + std::to_string(dev) +
               ", the communicator of rank " + std::to_string(comm->rank) + " is on device " +
               std::to_string(comm->device);
    return "";
}

ncclResult_t collective(Comm* comm, void* stream, Op op) {
    const char* name = call_name(op.kind);
    auto bad = [&](const std::string& why) {
        if (t_group_depth > 0) t_group_failed = true;
        return fail(ncclInvalidArgument, std::string(name) + ": " + why);
    };
    if (!comm) return bad("no communicator");
    if (comm->aborted) return bad("an aborted communicator (after ncclCommAbort it is freed memory on a GPU)");
    if (!dtype_name(op.dtype))
        return bad("datatype " + std::to_string(op.dtype) +
                   " is not emulated (float16, float32 and float64 are)");
    if (op.kind == Kind::all_reduce && (op.redop < 0 || op.redop > 4))
        return bad("reduction " + std::to_string(op.redop) + " is not emulated");
    if (op.kind == Kind::broadcast && (op.root < 0 || op.root >= comm->clique->nranks))
        return bad("root " + std::to_string(op.root) + " is not a rank");
    const size_t bytes = op.count * dtype_size(op.dtype);
    if (bytes) {
        bool reads = op.kind == Kind::all_reduce || op.root == comm->rank;
        std::string why = reads ? buffer_problem(comm, op.send, bytes, "sendbuff") : "";
        if (why.empty()) why = buffer_problem(comm, op.recv, bytes, "recvbuff");
        if (!why.empty()) return bad(why);
    }
    if (t_group_depth > 0) {
        t_group.push_back(Pending{comm, stream, op});
        return ncclSuccess;
    }
    return enqueue(comm, stream, {op});
}

}  // namespace

EMU_EXPORT ncclResult_t ncclGetVersion(int* version) {
    if (!version) return ncclInvalidArgument;
    *version = 22703;  // the API of NCCL 2.27
    return ncclSuccess;
}

EMU_EXPORT const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error";
        case ncclSystemError: return "unhandled system error";
        case ncclInternalError: return "internal error";
        case ncclInvalidArgument: return "invalid argument";
        case ncclInvalidUsage: return "invalid usage";
        case ncclRemoteError: return "remote process exited or there was a network error";
        case ncclInProgress: return "NCCL operation in progress";
        default: return "unknown result code";
    }
}

EMU_EXPORT const char* ncclGetLastError(void*) { return t_last_error.c_str(); }

EMU_EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    static std::atomic<unsigned long long> counter{0};
    if (!id) return ncclInvalidArgument;
    memset(id->internal, 0, sizeof id->internal);
    memcpy(id->internal, kMagic, sizeof kMagic);
    unsigned long long n = ++counter, pid = (unsigned long long)getpid();
    memcpy(id->internal + sizeof kMagic, &pid, 8);
    memcpy(id->internal + sizeof kMagic + 8, &n, 8);
    return ncclSuccess;
}

// Blocks until all `nranks` ranks joined (or the timeout), as NCCL's does.
EMU_EXPORT ncclResult_t ncclCommInitRank(void** out, int nranks, ncclUniqueId id, int rank) {
    const std::string who = "ncclCommInitRank (rank " + std::to_string(rank) + ")";
    if (!out || nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, who + ": rank must be in 0.." +
                                             std::to_string(nranks) + " of a positive count");
    if (memcmp(id.internal, kMagic, sizeof kMagic) != 0)
        return fail(ncclInvalidArgument, who + ": the id is not one ncclGetUniqueId made");
    const std::string key(id.internal, sizeof id.internal);
    const auto started = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lk(g_mu);
    auto& slot = g_cliques[key];
    if (!slot) {
        slot = std::make_unique<Clique>();
        slot->nranks = nranks;
        slot->joined.assign(nranks, false);
        slot->next.assign(nranks, 0);
    }
    Clique& c = *slot;
    if (!c.init_error.empty()) return fail(ncclSystemError, c.init_error, false);
    if (c.nranks != nranks) {
        std::vector<int> first;
        for (int i = 0; i < c.nranks; ++i)
            if (c.joined[i]) first.push_back(i);
        return fail(ncclInvalidUsage, who + " says the group has " + std::to_string(nranks) +
                                          " ranks; ranks " + rank_list(first) + " said " +
                                          std::to_string(c.nranks));
    }
    if (c.joined[rank]) return fail(ncclInvalidUsage, who + ": rank joined twice");
    c.joined[rank] = true;
    ++c.joins;
    ++c.live;
    g_cv.notify_all();
    if (!g_cv.wait_until(lk, started + timeout(),
                         [&] { return c.joins == c.nranks || !c.init_error.empty(); })) {
        std::vector<int> waiting, missing;
        for (int i = 0; i < c.nranks; ++i) (c.joined[i] ? waiting : missing).push_back(i);
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started).count();
        c.init_error = "deadlock: ranks " + rank_list(waiting) + " waited " +
                       std::to_string(ms) + " ms at ncclCommInitRank for ranks " +
                       rank_list(missing);
        g_cv.notify_all();
    }
    if (!c.init_error.empty()) {
        std::string err = c.init_error;
        bool print = --c.live == 0;
        if (print) g_cliques.erase(key);
        return fail(ncclSystemError, err, print);
    }
    *out = new Comm{key, &c, rank, emu::current_device()};
    return ncclSuccess;
}

EMU_EXPORT ncclResult_t ncclCommDestroy(void* comm) {
    auto* cm = static_cast<Comm*>(comm);
    if (!cm) return ncclInvalidArgument;
    std::lock_guard<std::mutex> lk(g_mu);
    if (cm->aborted)
        return fail(ncclInvalidUsage, "ncclCommDestroy of rank " + std::to_string(cm->rank) +
                                          "'s aborted communicator (a double free on a GPU)");
    // A clique some of whose communicators were aborted is kept (see Comm::aborted).
    if (--cm->clique->live == 0 && cm->clique->aborts == 0) g_cliques.erase(cm->key);
    delete cm;
    return ncclSuccess;
}
// From any thread, as NCCL allows: releases the rank if it waits in a collective (as the
// abort flag NCCL's kernels poll does), and makes every later use of the communicator an error.
EMU_EXPORT ncclResult_t ncclCommAbort(void* comm) {
    auto* cm = static_cast<Comm*>(comm);
    if (!cm) return ncclInvalidArgument;
    std::lock_guard<std::mutex> lk(g_mu);
    if (cm->aborted)
        return fail(ncclInvalidUsage, "ncclCommAbort of rank " + std::to_string(cm->rank) +
                                          "'s communicator twice (a double free on a GPU)");
    cm->aborted = true;
    --cm->clique->live;
    ++cm->clique->aborts;
    g_cv.notify_all();
    return ncclSuccess;
}
EMU_EXPORT ncclResult_t ncclCommFinalize(void* comm) {
    return comm ? ncclSuccess : ncclInvalidArgument;
}

EMU_EXPORT ncclResult_t ncclCommCount(const void* comm, int* n) {
    if (!comm || !n) return ncclInvalidArgument;
    *n = static_cast<const Comm*>(comm)->clique->nranks;
    return ncclSuccess;
}
EMU_EXPORT ncclResult_t ncclCommCuDevice(const void* comm, int* dev) {
    if (!comm || !dev) return ncclInvalidArgument;
    *dev = static_cast<const Comm*>(comm)->device;
    return ncclSuccess;
}
EMU_EXPORT ncclResult_t ncclCommUserRank(const void* comm, int* rank) {
    if (!comm || !rank) return ncclInvalidArgument;
    *rank = static_cast<const Comm*>(comm)->rank;
    return ncclSuccess;
}

EMU_EXPORT ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int dtype,
                                      int op, void* comm, void* stream) {
    return collective(static_cast<Comm*>(comm), stream,
                      Op{Kind::all_reduce, send, recv, count, dtype, op, 0});
}
EMU_EXPORT ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int dtype,
                                      int root, void* comm, void* stream) {
    return collective(static_cast<Comm*>(comm), stream,
                      Op{Kind::broadcast, send, recv, count, dtype, 0, root});
}

EMU_EXPORT ncclResult_t ncclGroupStart() {
    if (t_group_depth++ == 0) {
        t_group.clear();
        t_group_failed = false;
    }
    return ncclSuccess;
}

// The outermost end queues the group's calls as one collective of their communicator.
EMU_EXPORT ncclResult_t ncclGroupEnd() {
    if (t_group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--t_group_depth > 0) return ncclSuccess;
    std::vector<Pending> group = std::move(t_group);
    t_group.clear();
    if (t_group_failed) {
        t_group_failed = false;
        return fail(ncclInvalidArgument,
                    "ncclGroupEnd: a call of the group failed (" + t_last_error + ")", false);
    }
    if (group.empty()) return ncclSuccess;
    std::vector<Op> ops;
    for (const Pending& p : group) {
        if (p.comm != group[0].comm || p.stream != group[0].stream)
            return fail(ncclInvalidUsage,
                        "ncclGroupEnd: a group over several communicators or streams (one "
                        "thread driving several GPUs) is not emulated; use one thread per GPU");
        ops.push_back(p.op);
    }
    return enqueue(group[0].comm, group[0].stream, std::move(ops));
}
