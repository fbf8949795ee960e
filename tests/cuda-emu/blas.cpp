// cuBLAS (and the cuBLASLt library it needs) for the calls the backend makes, from the cuBLAS
// documentation's column-major definitions: C = alpha * op(A) * op(B) + beta * C with op(A)
// m x k, op(B) k x n, C m x n; lda is the leading dimension of A *as stored* (rows of A when
// not transposed, of A^T's source otherwise). With beta == 0, C is not read (it may hold NaN).
// Invalid arguments return CUBLAS_STATUS_INVALID_VALUE as the library does; an operand that
// does not lie inside one device allocation fails as an execution error, with the reason.
// cublasGemmEx / cublasGemmStridedBatchedEx cover what mixed precision needs (fp16 A and B,
// fp16 or fp32 C, fp32 compute) and the all-fp32 case; other combinations return
// CUBLAS_STATUS_NOT_SUPPORTED and say so on stderr.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "emu.h"

enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
// cudaDataType_t, cublasComputeType_t, cublasMath_t and cublasGemmAlgo_t values (cublas_api.h).
enum : int { CUDA_R_32F = 0, CUDA_R_16F = 2 };
enum : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
enum : int {
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16,
};
enum : int {
    CUBLAS_GEMM_DEFAULT = -1,
    CUBLAS_GEMM_ALGO23 = 23,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
    CUBLAS_GEMM_ALGO15_TENSOR_OP = 115,
};

namespace {
struct Handle {
    void* stream = nullptr;
    int math_mode = 0;
    int pointer_mode = 0;  // 0: alpha/beta on the host
};

bool op_valid(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

// Whether the stored matrix (`rows` x `cols`, leading dimension ld, column-major) lies in
// device memory; the last element is at (rows - 1) + (cols - 1) * ld.
bool operand_ok(const char* fn, const char* what, const void* p, size_t elem_bytes,
                long long rows, long long cols, long long ld) {
    if (rows == 0 || cols == 0) return true;
    size_t bytes = ((size_t)(rows - 1) + (size_t)(cols - 1) * (size_t)ld + 1) * elem_bytes;
    std::string why;
    if (emu::device_range(p, bytes, &why)) return true;
    emu::note(std::string(fn) + ": operand " + what + ": " + why);
    return false;
}

// The three operands of one product, as stored (lda of A as stored, see above).
bool operands_ok(const char* fn, int ta, int tb, int m, int n, int k, const void* A, int lda,
                 size_t a_bytes, const void* B, int ldb, size_t b_bytes, const void* C, int ldc,
                 size_t c_bytes) {
    const bool tra = ta != CUBLAS_OP_N, trb = tb != CUBLAS_OP_N;
    return operand_ok(fn, "A", A, a_bytes, tra ? k : m, tra ? m : k, lda) &&
           operand_ok(fn, "B", B, b_bytes, trb ? n : k, trb ? k : n, ldb) &&
           operand_ok(fn, "C", C, c_bytes, m, n, ldc);
}

// Packed copies of op(A) by rows and op(B) by columns, converted to float: every dot product
// reads two contiguous runs of k values.
template <class T>
std::vector<float> pack_rows(bool trans, int m, int k, const T* A, int lda) {
    std::vector<float> p((size_t)m * k);
    for (int i = 0; i < m; ++i)
        for (int l = 0; l < k; ++l)
            p[(size_t)i * k + l] = (float)(trans ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda]);
    return p;
}
template <class T>
std::vector<float> pack_cols(bool trans, int n, int k, const T* B, int ldb) {
    std::vector<float> p((size_t)n * k);
    for (int j = 0; j < n; ++j)
        for (int l = 0; l < k; ++l)
            p[(size_t)j * k + l] = (float)(trans ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb]);
    return p;
}

// Runs a checked call's arithmetic now, or records it when the handle's stream is capturing
// (alpha and beta were read at the call, as cuBLAS reads them in host pointer mode).
int on_stream(const Handle* h, const char* fn, std::function<int()> work) {
    switch (emu::capture_library_call(h->stream, fn, work)) {
        case emu::Captured::recorded: return CUBLAS_STATUS_SUCCESS;
        case emu::Captured::invalidated: return CUBLAS_STATUS_EXECUTION_FAILED;
        case emu::Captured::none: break;
    }
    return work();
}

int gemm_checks(const Handle* h, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!op_valid(ta) || !op_valid(tb) || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int a_rows = ta == CUBLAS_OP_N ? m : k;
    const int b_rows = tb == CUBLAS_OP_N ? k : n;
    auto at_least = [](int rows) { return rows > 1 ? rows : 1; };
    if (lda < at_least(a_rows) || ldb < at_least(b_rows) || ldc < at_least(m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (h->pointer_mode != 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

// Math modes that turn an fp32 product into something else: CUBLAS_TENSOR_OP_MATH (deprecated)
// makes single-precision GEMMs use CUBLAS_COMPUTE_32F_FAST_16F, whose down-conversion is not
// emulated. (CUBLAS_TF32_TENSOR_OP_MATH has no effect on compute capability 7.5.)
bool fp32_math_mode_ok(const Handle* h, const char* fn) {
    if ((h->math_mode & 0xf) != CUBLAS_TENSOR_OP_MATH) return true;
    emu::note(std::string(fn) + ": math mode CUBLAS_TENSOR_OP_MATH (fp32 inputs down-converted "
                                "to fp16, CUBLAS_COMPUTE_32F_FAST_16F) is not emulated");
    return false;
}

using half = _Float16;  // IEEE binary16; conversion from float rounds to nearest even

// One product C = alpha * op(A) * op(B) + beta * C with the sums in Acc, C of type TC (C not
// read when beta == 0). The library's order of summation is unspecified; this sums in k order.
// - fp32 A and B (sgemm): Acc = double, the exact value rounded once (the best any order gives).
// - fp16 A and B, CUBLAS_COMPUTE_32F: Acc = float, as cuBLAS defines it: fp32 accumulation,
//   alpha * acc + beta * C in fp32, one rounding to C's type. Each product of two fp16 values is
//   exact in fp32 (11 + 11 significant bits), so fused and unfused multiply-adds agree; a GPU's
//   order (tensor-core tiles, split-k) differs, so it agrees to rounding, not bit for bit.
template <class Acc, class TA, class TC>
int gemm_one(const char* fn, int ta, int tb, int m, int n, int k, float alpha, const TA* A,
             int lda, const TA* B, int ldb, float beta, TC* C, int ldc) {
    if (!operands_ok(fn, ta, tb, m, n, k, A, lda, sizeof(TA), B, ldb, sizeof(TA), C, ldc,
                     sizeof(TC)))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    const std::vector<float> ap = pack_rows(ta != CUBLAS_OP_N, m, k, A, lda);
    const std::vector<float> bp = pack_cols(tb != CUBLAS_OP_N, n, k, B, ldb);
    for (int j = 0; j < n; ++j) {
        const float* bj = &bp[(size_t)j * k];
        for (int i = 0; i < m; ++i) {
            const float* ai = &ap[(size_t)i * k];
            Acc acc = 0;
            for (int l = 0; l < k; ++l) acc += (Acc)ai[l] * (Acc)bj[l];
            TC& c = C[i + (size_t)j * ldc];
            Acc r = (Acc)alpha * acc;
            if (beta != 0.0f) r += (Acc)beta * (Acc)c;
            c = (TC)r;
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

bool algo_valid(int algo) {
    return (algo >= CUBLAS_GEMM_DEFAULT && algo <= CUBLAS_GEMM_ALGO23) ||
           (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP);
}

// "" when the GemmEx combination is emulated, otherwise what is not (the supported table of
// the cuBLAS documentation for cublasGemmEx, restricted to what the backend needs).
std::string ex_not_emulated(const Handle* h, int a_type, int b_type, int c_type, int compute,
                            int algo) {
    const std::string types = "A/B/C types " + std::to_string(a_type) + "/" +
                              std::to_string(b_type) + "/" + std::to_string(c_type);
    if (!algo_valid(algo)) return "algo " + std::to_string(algo);
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC)
        return "compute type " + std::to_string(compute) +
               " (only CUBLAS_COMPUTE_32F and CUBLAS_COMPUTE_32F_PEDANTIC are emulated; the "
               "FAST_* types take fp32 inputs only and down-convert them in ways not emulated)";
    if (a_type != b_type) return types;
    if (a_type == CUDA_R_32F) {
        if (c_type != CUDA_R_32F) return types;
        // cuBLAS: a tensor-op algo for a single-precision product means COMPUTE_32F_FAST_16F.
        if (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP)
            return "tensor-op algo " + std::to_string(algo) +
                   " with fp32 inputs (CUBLAS_COMPUTE_32F_FAST_16F down-conversion)";
        if ((h->math_mode & 0xf) == CUBLAS_TENSOR_OP_MATH)
            return "math mode CUBLAS_TENSOR_OP_MATH with fp32 inputs (CUBLAS_COMPUTE_32F_FAST_16F "
                   "down-conversion)";
        return "";
    }
    if (a_type != CUDA_R_16F || (c_type != CUDA_R_16F && c_type != CUDA_R_32F)) return types;
    // Without this flag cuBLAS may reduce partial sums (split-k) in the output type, fp16,
    // where and how often unspecified; with it (or pedantic compute) all reductions are fp32.
    if (c_type == CUDA_R_16F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
        !(h->math_mode & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
        return "an fp16 C without CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION in the math "
               "mode (cuBLAS may then reduce partial sums in fp16; set it with cublasSetMathMode)";
    return "";
}

// cublasGemmEx (batch 1) and cublasGemmStridedBatchedEx; strides in elements of each operand.
int gemm_ex(const char* fn, void* handle, int ta, int tb, int m, int n, int k,
            const void* alpha, const void* A, int a_type, int lda, long long stride_a,
            const void* B, int b_type, int ldb, long long stride_b, const void* beta, void* C,
            int c_type, int ldc, long long stride_c, int batch, int compute, int algo) {
    auto* h = static_cast<Handle*>(handle);
    if (int r = gemm_checks(h, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    if (!alpha || !beta || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    const std::string why = ex_not_emulated(h, a_type, b_type, c_type, compute, algo);
    if (!why.empty()) {
        emu::note(std::string(fn) + ": " + why + " is not emulated");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    return on_stream(h, fn, [=]() -> int {
        for (int b = 0; b < batch; ++b) {
            int r;
            if (a_type == CUDA_R_32F) {
                r = gemm_one<double>(fn, ta, tb, m, n, k, al,
                                     static_cast<const float*>(A) + b * stride_a, lda,
                                     static_cast<const float*>(B) + b * stride_b, ldb, be,
                                     static_cast<float*>(C) + b * stride_c, ldc);
            } else {
                const half* a = static_cast<const half*>(A) + b * stride_a;
                const half* bb = static_cast<const half*>(B) + b * stride_b;
                r = c_type == CUDA_R_16F
                        ? gemm_one<float>(fn, ta, tb, m, n, k, al, a, lda, bb, ldb, be,
                                          static_cast<half*>(C) + b * stride_c, ldc)
                        : gemm_one<float>(fn, ta, tb, m, n, k, al, a, lda, bb, ldb, be,
                                          static_cast<float*>(C) + b * stride_c, ldc);
            }
            if (r) return r;
        }
        return CUBLAS_STATUS_SUCCESS;
    });
}
}  // namespace

EMU_EXPORT int cublasCreate_v2(void** handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new Handle;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasDestroy_v2(void* handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete static_cast<Handle*>(handle);
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasSetStream_v2(void* handle, void* stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(handle)->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasGetStream_v2(void* handle, void** stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = static_cast<Handle*>(handle)->stream;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasSetMathMode(void* handle, int mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle*>(handle)->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasGetMathMode(void* handle, int* mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = static_cast<Handle*>(handle)->math_mode;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasSetPointerMode_v2(void* handle, int mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != 0 && mode != 1) return CUBLAS_STATUS_INVALID_VALUE;
    static_cast<Handle*>(handle)->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasGetPointerMode_v2(void* handle, int* mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = static_cast<Handle*>(handle)->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasGetVersion_v2(void*, int* v) {
    if (!v) return CUBLAS_STATUS_INVALID_VALUE;
    *v = 130000;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasSetWorkspace_v2(void* handle, void*, size_t) {
    return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

EMU_EXPORT int cublasSgemm_v2(void* handle, int ta, int tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B,
                              int ldb, const float* beta, float* C, int ldc) {
    auto* h = static_cast<Handle*>(handle);
    if (int r = gemm_checks(h, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (!fp32_math_mode_ok(h, "cublasSgemm")) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float al = *alpha, be = *beta;
    return on_stream(h, "cublasSgemm", [=] {
        return gemm_one<double>("cublasSgemm", ta, tb, m, n, k, al, A, lda, B, ldb, be, C, ldc);
    });
}

EMU_EXPORT int cublasSgemmStridedBatched(void* handle, int ta, int tb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long stride_a, const float* B, int ldb,
                                         long long stride_b, const float* beta, float* C,
                                         int ldc, long long stride_c, int batch) {
    auto* h = static_cast<Handle*>(handle);
    if (int r = gemm_checks(h, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    if (!alpha || !beta || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (!fp32_math_mode_ok(h, "cublasSgemmStridedBatched")) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float al = *alpha, be = *beta;
    return on_stream(h, "cublasSgemmStridedBatched", [=] {
        for (int b = 0; b < batch; ++b) {
            int r = gemm_one<double>("cublasSgemmStridedBatched", ta, tb, m, n, k, al,
                                     A + b * stride_a, lda, B + b * stride_b, ldb, be,
                                     C + b * stride_c, ldc);
            if (r) return r;
        }
        return (int)CUBLAS_STATUS_SUCCESS;
    });
}

EMU_EXPORT int cublasGemmEx(void* handle, int ta, int tb, int m, int n, int k,
                            const void* alpha, const void* A, int a_type, int lda, const void* B,
                            int b_type, int ldb, const void* beta, void* C, int c_type, int ldc,
                            int compute, int algo) {
    return gemm_ex("cublasGemmEx", handle, ta, tb, m, n, k, alpha, A, a_type, lda, 0, B, b_type,
                   ldb, 0, beta, C, c_type, ldc, 0, 1, compute, algo);
}

EMU_EXPORT int cublasGemmStridedBatchedEx(void* handle, int ta, int tb, int m, int n, int k,
                                          const void* alpha, const void* A, int a_type, int lda,
                                          long long stride_a, const void* B, int b_type, int ldb,
                                          long long stride_b, const void* beta, void* C,
                                          int c_type, int ldc, long long stride_c, int batch,
                                          int compute, int algo) {
    return gemm_ex("cublasGemmStridedBatchedEx", handle, ta, tb, m, n, k, alpha, A, a_type, lda,
                   stride_a, B, b_type, ldb, stride_b, beta, C, c_type, ldc, stride_c, batch,
                   compute, algo);
}

// cuBLASLt: cuBLAS needs the library present; the backend makes no Lt calls of its own.
EMU_EXPORT int cublasLtCreate(void** handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new int(0);
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasLtDestroy(void* handle) {
    delete static_cast<int*>(handle);
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT size_t cublasLtGetVersion() { return 130000; }

// libraryPropertyType: 0 major, 1 minor, 2 patch. The emulator reports cuBLAS 13.0.0.
static int property(int type, int* value) {
    if (!value || type < 0 || type > 2) return CUBLAS_STATUS_INVALID_VALUE;
    *value = type == 0 ? 13 : 0;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_EXPORT int cublasGetProperty(int type, int* value) { return property(type, value); }
EMU_EXPORT int cublasLtGetProperty(int type, int* value) { return property(type, value); }
