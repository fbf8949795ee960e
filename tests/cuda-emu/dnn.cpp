// cuDNN 9 for the calls of the backend's `--conv-impl cudnn` path: descriptors, algorithm
// heuristics, workspace sizes and the three convolution directions, computed by a direct
// reference convolution. Emulated: 2-D NCHW tensors, group count 1, cross-correlation or
// convolution mode, any padding, stride and dilation, in two of cuDNN's data type
// configurations (the types of x, w, y and the convolution's compute type):
// - FLOAT_CONFIG (all float): the exact sum in double, alpha * sum + beta * y in double,
//   rounded once to float (the best any summation order gives).
// - PSEUDO_HALF_CONFIG (half tensors and filter, float compute: what tensor cores run): each
//   half input converted to float (exact), products (exact in float: 11 + 11 significant
//   bits) summed in float in the order of for_each_tap's loops, r = alpha * sum, then
//   r += beta * y in float when beta != 0, and r rounded once to half, to nearest even (beyond
//   65504 to inf). A GPU sums in another order (tiles, split reductions), so it agrees to
//   float rounding before the final half rounding, not bit for bit. Any math type is accepted
//   with half data (tensor cores or not, the definition is the same).
// Anything else (true half: half compute; mixed data types; other types; float data under
// CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, which down-converts to half) returns
// CUDNN_STATUS_NOT_SUPPORTED and says so on stderr.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "emu.h"

enum : int {
    CUDNN_STATUS_SUCCESS = 0,
    CUDNN_STATUS_NOT_INITIALIZED = 1001,
    CUDNN_STATUS_BAD_PARAM = 2000,
    CUDNN_STATUS_BAD_PARAM_NULL_POINTER = 2002,
    CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH = 2008,
    CUDNN_STATUS_NOT_SUPPORTED = 3000,
    CUDNN_STATUS_EXECUTION_FAILED = 5000,
};
enum : int { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_HALF = 2, CUDNN_TENSOR_NCHW = 0 };
enum : int { CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2 };
enum : int { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 };

namespace {
struct Handle {
    void* stream = nullptr;
};
using half = _Float16;  // IEEE binary16; conversion from float rounds to nearest even

struct Tensor {
    bool set = false;
    int n = 0, c = 0, h = 0, w = 0;
    int dtype = CUDNN_DATA_FLOAT;
    long long count() const { return (long long)n * c * h * w; }
};
struct Filter {
    bool set = false;
    int k = 0, c = 0, h = 0, w = 0;
    int dtype = CUDNN_DATA_FLOAT;
    long long count() const { return (long long)k * c * h * w; }
};
struct Conv {
    bool set = false;
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1, mode = 1;
    int math = 0, groups = 1;
    int compute = CUDNN_DATA_FLOAT;
};

// cudnnConvolutionFwdAlgoPerf_t and its two siblings have this layout.
struct AlgoPerf {
    int algo;
    int status;
    float time;
    size_t memory;
    int determinism;
    int math_type;
    int reserved[3];
};

int unsupported(const std::string& what) {
    emu::note("cuDNN: " + what + " is not emulated (CUDNN_STATUS_NOT_SUPPORTED)");
    return CUDNN_STATUS_NOT_SUPPORTED;
}

std::string type_name(int t) {
    return t == CUDNN_DATA_FLOAT ? "float" : t == CUDNN_DATA_HALF ? "half" : std::to_string(t);
}

// FLOAT_CONFIG or PSEUDO_HALF_CONFIG (see the top of the file), else not emulated.
int data_types(const Tensor* x, const Filter* w, const Conv* cv, const Tensor* y) {
    const std::string types = "x/w/y data types " + type_name(x->dtype) + "/" +
                              type_name(w->dtype) + "/" + type_name(y->dtype) +
                              " with compute type " + type_name(cv->compute);
    if (x->dtype != w->dtype || x->dtype != y->dtype) return unsupported("mixed " + types);
    if (x->dtype == CUDNN_DATA_FLOAT) {
        if (cv->math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
            return unsupported("float data under CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION (down-"
                               "converted to half on tensor cores)");
        return CUDNN_STATUS_SUCCESS;
    }
    if (cv->compute != CUDNN_DATA_FLOAT)
        return unsupported(types + " (TRUE_HALF_CONFIG: sums in half)");
    return CUDNN_STATUS_SUCCESS;
}

size_t elem_bytes(int dtype) { return dtype == CUDNN_DATA_HALF ? 2 : 4; }

// Checks that x, w, y agree with the convolution (cuDNN's output-size formula) in a data type
// configuration that is emulated.
int geometry(const Tensor* x, const Filter* w, const Conv* cv, const Tensor* y) {
    if (!x || !w || !cv || !y) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (!x->set || !w->set || !cv->set || !y->set) return CUDNN_STATUS_BAD_PARAM;
    if (cv->groups != 1) return unsupported("group count != 1");
    if (int r = data_types(x, w, cv, y)) return r;
    if (x->c != w->c || y->n != x->n || y->c != w->k) return CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH;
    const int oh = (x->h + 2 * cv->pad_h - ((w->h - 1) * cv->dil_h + 1)) / cv->u + 1;
    const int ow = (x->w + 2 * cv->pad_w - ((w->w - 1) * cv->dil_w + 1)) / cv->v + 1;
    if (y->h != oh || y->w != ow) return CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH;
    return CUDNN_STATUS_SUCCESS;
}

bool on_device(const char* what, const void* p, long long elems, size_t elem_size) {
    std::string why;
    if (elems == 0 || emu::device_range(p, (size_t)elems * elem_size, &why)) return true;
    emu::note(std::string("cuDNN: ") + what + ": " + why);
    return false;
}

// Calls f(n, co, oy, ox, ci, y, x, ki, kj) for every (output, tap) pair inside the image.
template <class F>
void for_each_tap(const Tensor& x, const Filter& w, const Conv& cv, const Tensor& y, F f) {
    for (int n = 0; n < y.n; ++n)
        for (int co = 0; co < y.c; ++co)
            for (int oy = 0; oy < y.h; ++oy)
                for (int ox = 0; ox < y.w; ++ox)
                    for (int ci = 0; ci < x.c; ++ci)
                        for (int ki = 0; ki < w.h; ++ki) {
                            const int iy = oy * cv.u - cv.pad_h + ki * cv.dil_h;
                            if (iy < 0 || iy >= x.h) continue;
                            for (int kj = 0; kj < w.w; ++kj) {
                                const int ix = ox * cv.v - cv.pad_w + kj * cv.dil_w;
                                if (ix < 0 || ix >= x.w) continue;
                                // Convolution mode flips the filter.
                                const int fi = cv.mode == CUDNN_CONVOLUTION ? w.h - 1 - ki : ki;
                                const int fj = cv.mode == CUDNN_CONVOLUTION ? w.w - 1 - kj : kj;
                                f((((size_t)n * y.c + co) * y.h + oy) * y.w + ox,
                                  (((size_t)n * x.c + ci) * x.h + iy) * x.w + ix,
                                  (((size_t)co * w.c + ci) * w.h + fi) * w.w + fj);
                            }
                        }
}

// One direction's arithmetic in element type T with sums in Acc (double for float data, float
// for half): out[o] = alpha * Σ a[i] * b[j] over the (o, i, j) triples `pairs` visits, plus
// beta * out[o] when beta != 0 (out not read otherwise), rounded once to T. `pairs(f)` calls
// f(o, i, j) for each product in a fixed order.
template <class T, class Acc, class Pairs>
void accumulate(long long out_count, const void* a, const void* b, void* out, float alpha,
                float beta, Pairs pairs) {
    const T* ap = static_cast<const T*>(a);
    const T* bp = static_cast<const T*>(b);
    T* op = static_cast<T*>(out);
    std::vector<Acc> acc((size_t)out_count, Acc(0));
    pairs([&](size_t o, size_t i, size_t j) { acc[o] += (Acc)ap[i] * (Acc)bp[j]; });
    for (size_t o = 0; o < acc.size(); ++o) {
        Acc r = (Acc)alpha * acc[o];
        if (beta != 0.0f) r += (Acc)beta * (Acc)op[o];
        op[o] = (T)r;
    }
}

// `accumulate` in the configuration the descriptors' data type names.
template <class Pairs>
void run_typed(int dtype, long long out_count, const void* a, const void* b, void* out,
               float alpha, float beta, Pairs pairs) {
    if (dtype == CUDNN_DATA_HALF)
        accumulate<half, float>(out_count, a, b, out, alpha, beta, pairs);
    else
        accumulate<float, double>(out_count, a, b, out, alpha, beta, pairs);
}

// Workspace each algorithm asks for: none for the implicit GEMMs, some for the others, so the
// backend's workspace handling runs; the buffer passed must be at least that large.
// Runs a checked call's arithmetic now, or records it when the handle's stream is capturing.
// The descriptors and alpha/beta are copied at the call: cuDNN reads them there, so a graph
// replays the call as it was made.
int on_stream(const void* h, const char* fn, std::function<int()> work) {
    switch (emu::capture_library_call(static_cast<const Handle*>(h)->stream, fn, work)) {
        case emu::Captured::recorded: return CUDNN_STATUS_SUCCESS;
        case emu::Captured::invalidated: return CUDNN_STATUS_EXECUTION_FAILED;
        case emu::Captured::none: break;
    }
    return work();
}

size_t workspace_for(int algo) { return algo == 0 ? 0 : 4096 + (size_t)algo * 1024; }

int check_workspace(const void* ws, size_t have, int algo) {
    const size_t need = workspace_for(algo);
    if (need == 0) return CUDNN_STATUS_SUCCESS;
    if (!ws || have < need) return CUDNN_STATUS_BAD_PARAM;
    return on_device("workspace", ws, (long long)need, 1) ? CUDNN_STATUS_SUCCESS
                                                          : CUDNN_STATUS_EXECUTION_FAILED;
}

int perf_list(int requested, int* returned, AlgoPerf* out, int count, const Conv* cv) {
    if (!returned || !out || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    // The heuristic's first choice is a workspace-using algorithm, then the rest in order.
    std::vector<int> order{1};
    for (int a = 0; a < count; ++a)
        if (a != 1) order.push_back(a);
    int n = 0;
    for (int a : order) {
        if (n == requested) break;
        out[n] = AlgoPerf{a, CUDNN_STATUS_SUCCESS, 1.0f + n, workspace_for(a), 1, cv->math, {}};
        ++n;
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}
}  // namespace

EMU_EXPORT size_t cudnnGetVersion() { return 91000; }
EMU_EXPORT size_t cudnnGetCudartVersion() { return 13000; }
EMU_EXPORT const char* cudnnGetErrorString(int s) {
    switch (s) {
        case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
        case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
        case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
        case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
        default: return "CUDNN_STATUS (emulated)";
    }
}
EMU_EXPORT int cudnnCreate(void** h) {
    if (!h) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    *h = new Handle;
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnDestroy(void* h) {
    delete static_cast<Handle*>(h);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetStream(void* h, void* stream) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(h)->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

EMU_EXPORT int cudnnCreateTensorDescriptor(void** d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    *d = new Tensor;
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnDestroyTensorDescriptor(void* d) {
    delete static_cast<Tensor*>(d);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetTensor4dDescriptor(void* d, int format, int dtype, int n, int c, int h,
                                          int w) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
    if (format != CUDNN_TENSOR_NCHW) return unsupported("a tensor layout other than NCHW");
    if (dtype != CUDNN_DATA_FLOAT && dtype != CUDNN_DATA_HALF)
        return unsupported("data type " + type_name(dtype) + " (only float and half are emulated)");
    *static_cast<Tensor*>(d) = Tensor{true, n, c, h, w, dtype};
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnCreateFilterDescriptor(void** d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    *d = new Filter;
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnDestroyFilterDescriptor(void* d) {
    delete static_cast<Filter*>(d);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetFilter4dDescriptor(void* d, int dtype, int format, int k, int c, int h,
                                          int w) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (k <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
    if (format != CUDNN_TENSOR_NCHW) return unsupported("a filter layout other than NCHW");
    if (dtype != CUDNN_DATA_FLOAT && dtype != CUDNN_DATA_HALF)
        return unsupported("data type " + type_name(dtype) + " (only float and half are emulated)");
    *static_cast<Filter*>(d) = Filter{true, k, c, h, w, dtype};
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnCreateConvolutionDescriptor(void** d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    *d = new Conv;
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnDestroyConvolutionDescriptor(void* d) {
    delete static_cast<Conv*>(d);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetConvolution2dDescriptor(void* d, int pad_h, int pad_w, int u, int v,
                                               int dil_h, int dil_w, int mode, int compute) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
        return CUDNN_STATUS_BAD_PARAM;
    if (compute != CUDNN_DATA_FLOAT && compute != CUDNN_DATA_HALF)
        return unsupported("compute type " + type_name(compute));
    auto* c = static_cast<Conv*>(d);
    *c = Conv{true, pad_h, pad_w, u, v, dil_h, dil_w, mode, c->math, c->groups, compute};
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetConvolutionMathType(void* d, int math) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (math < 0 || math > 3) return CUDNN_STATUS_BAD_PARAM;
    static_cast<Conv*>(d)->math = math;
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnSetConvolutionGroupCount(void* d, int groups) {
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (groups < 1) return CUDNN_STATUS_BAD_PARAM;
    static_cast<Conv*>(d)->groups = groups;
    return CUDNN_STATUS_SUCCESS;
}

// ---- algorithm heuristics and workspace sizes (forward: x, w, conv, y; backward-data: w, dy,
// conv, dx; backward-filter: x, dy, conv, dw).
EMU_EXPORT int cudnnGetConvolutionForwardAlgorithm_v7(void* h, void* x, void* w, void* cv,
                                                      void* y, int requested, int* returned,
                                                      AlgoPerf* perf) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto* c = static_cast<Conv*>(cv);
    if (int r = geometry(static_cast<Tensor*>(x), static_cast<Filter*>(w), c, static_cast<Tensor*>(y)))
        return r;
    return perf_list(requested, returned, perf, 8, c);
}
EMU_EXPORT int cudnnGetConvolutionBackwardDataAlgorithm_v7(void* h, void* w, void* dy, void* cv,
                                                           void* dx, int requested,
                                                           int* returned, AlgoPerf* perf) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto* c = static_cast<Conv*>(cv);
    if (int r = geometry(static_cast<Tensor*>(dx), static_cast<Filter*>(w), c, static_cast<Tensor*>(dy)))
        return r;
    return perf_list(requested, returned, perf, 6, c);
}
EMU_EXPORT int cudnnGetConvolutionBackwardFilterAlgorithm_v7(void* h, void* x, void* dy, void* cv,
                                                             void* dw, int requested,
                                                             int* returned, AlgoPerf* perf) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto* c = static_cast<Conv*>(cv);
    if (int r = geometry(static_cast<Tensor*>(x), static_cast<Filter*>(dw), c, static_cast<Tensor*>(dy)))
        return r;
    return perf_list(requested, returned, perf, 7, c);
}
EMU_EXPORT int cudnnGetConvolutionForwardWorkspaceSize(void* h, void* x, void* w, void* cv, void* y,
                                                       int algo, size_t* bytes) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    if (!bytes || algo < 0 || algo >= 8) return CUDNN_STATUS_BAD_PARAM;
    if (int r = geometry(static_cast<Tensor*>(x), static_cast<Filter*>(w), static_cast<Conv*>(cv),
                         static_cast<Tensor*>(y)))
        return r;
    *bytes = workspace_for(algo);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnGetConvolutionBackwardDataWorkspaceSize(void* h, void* w, void* dy, void* cv,
                                                            void* dx, int algo, size_t* bytes) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    if (!bytes || algo < 0 || algo >= 6) return CUDNN_STATUS_BAD_PARAM;
    if (int r = geometry(static_cast<Tensor*>(dx), static_cast<Filter*>(w), static_cast<Conv*>(cv),
                         static_cast<Tensor*>(dy)))
        return r;
    *bytes = workspace_for(algo);
    return CUDNN_STATUS_SUCCESS;
}
EMU_EXPORT int cudnnGetConvolutionBackwardFilterWorkspaceSize(void* h, void* x, void* dy, void* cv,
                                                              void* dw, int algo, size_t* bytes) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    if (!bytes || algo < 0 || algo >= 7) return CUDNN_STATUS_BAD_PARAM;
    if (int r = geometry(static_cast<Tensor*>(x), static_cast<Filter*>(dw), static_cast<Conv*>(cv),
                         static_cast<Tensor*>(dy)))
        return r;
    *bytes = workspace_for(algo);
    return CUDNN_STATUS_SUCCESS;
}

// ---- the three directions (x, w, y and their gradients in the descriptors' data type)
EMU_EXPORT int cudnnConvolutionForward(void* h, const float* alpha, void* xd, const void* x,
                                       void* wd, const void* w, void* cvd, int algo, void* ws,
                                       size_t ws_bytes, const float* beta, void* yd, void* y) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto *X = static_cast<Tensor*>(xd), *Y = static_cast<Tensor*>(yd);
    auto* W = static_cast<Filter*>(wd);
    auto* C = static_cast<Conv*>(cvd);
    if (int r = geometry(X, W, C, Y)) return r;
    if (!alpha || !beta || algo < 0 || algo >= 8) return CUDNN_STATUS_BAD_PARAM;
    if (int r = check_workspace(ws, ws_bytes, algo)) return r;
    const size_t es = elem_bytes(X->dtype);
    if (!on_device("x", x, X->count(), es) || !on_device("w", w, W->count(), es) ||
        !on_device("y", y, Y->count(), es))
        return CUDNN_STATUS_EXECUTION_FAILED;
    const float al = *alpha, be = *beta;
    return on_stream(h, "cudnnConvolutionForward", [=, X = *X, W = *W, C = *C, Y = *Y] {
        run_typed(X.dtype, Y.count(), x, w, y, al, be, [&](auto add) {
            for_each_tap(X, W, C, Y, [&](size_t yi, size_t xi, size_t wi) { add(yi, xi, wi); });
        });
        return (int)CUDNN_STATUS_SUCCESS;
    });
}

EMU_EXPORT int cudnnConvolutionBackwardData(void* h, const float* alpha, void* wd, const void* w,
                                            void* dyd, const void* dy, void* cvd, int algo,
                                            void* ws, size_t ws_bytes, const float* beta,
                                            void* dxd, void* dx) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto *DX = static_cast<Tensor*>(dxd), *DY = static_cast<Tensor*>(dyd);
    auto* W = static_cast<Filter*>(wd);
    auto* C = static_cast<Conv*>(cvd);
    if (int r = geometry(DX, W, C, DY)) return r;
    if (!alpha || !beta || algo < 0 || algo >= 6) return CUDNN_STATUS_BAD_PARAM;
    if (int r = check_workspace(ws, ws_bytes, algo)) return r;
    const size_t es = elem_bytes(DX->dtype);
    if (!on_device("dy", dy, DY->count(), es) || !on_device("w", w, W->count(), es) ||
        !on_device("dx", dx, DX->count(), es))
        return CUDNN_STATUS_EXECUTION_FAILED;
    const float al = *alpha, be = *beta;
    return on_stream(h, "cudnnConvolutionBackwardData", [=, DX = *DX, W = *W, C = *C, DY = *DY] {
        run_typed(DX.dtype, DX.count(), dy, w, dx, al, be, [&](auto add) {
            for_each_tap(DX, W, C, DY, [&](size_t yi, size_t xi, size_t wi) { add(xi, yi, wi); });
        });
        return (int)CUDNN_STATUS_SUCCESS;
    });
}

EMU_EXPORT int cudnnConvolutionBackwardFilter(void* h, const float* alpha, void* xd,
                                              const void* x, void* dyd, const void* dy,
                                              void* cvd, int algo, void* ws, size_t ws_bytes,
                                              const float* beta, void* dwd, void* dw) {
    if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
    auto *X = static_cast<Tensor*>(xd), *DY = static_cast<Tensor*>(dyd);
    auto* DW = static_cast<Filter*>(dwd);
    auto* C = static_cast<Conv*>(cvd);
    if (int r = geometry(X, DW, C, DY)) return r;
    if (!alpha || !beta || algo < 0 || algo >= 7) return CUDNN_STATUS_BAD_PARAM;
    if (int r = check_workspace(ws, ws_bytes, algo)) return r;
    const size_t es = elem_bytes(X->dtype);
    if (!on_device("x", x, X->count(), es) || !on_device("dy", dy, DY->count(), es) ||
        !on_device("dw", dw, DW->count(), es))
        return CUDNN_STATUS_EXECUTION_FAILED;
    const float al = *alpha, be = *beta;
    return on_stream(h, "cudnnConvolutionBackwardFilter", [=, X = *X, DW = *DW, C = *C, DY = *DY] {
        run_typed(X.dtype, DW.count(), x, dy, dw, al, be, [&](auto add) {
            for_each_tap(X, DW, C, DY, [&](size_t yi, size_t xi, size_t wi) { add(wi, xi, yi); });
        });
        return (int)CUDNN_STATUS_SUCCESS;
    });
}
