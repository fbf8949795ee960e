// cuBLAS (and the cuBLASLt library it needs) for the calls the backend makes, from the cuBLAS
// documentation's column-major definitions: C = alpha * op(A) * op(B) + beta * C with op(A)
// m x k, op(B) k x n, C m x n; lda is the leading dimension of A *as stored* (rows of A when
// not transposed, of A^T's source otherwise). With beta == 0, C is not read (it may hold NaN).
// Invalid arguments return CUBLAS_STATUS_INVALID_VALUE as the library does; an operand that
// does not lie inside one device allocation fails as an execution error, with the reason.
#include <cstdio>
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

namespace {
struct Handle {
    void* stream = nullptr;
    int math_mode = 0;
    int pointer_mode = 0;  // 0: alpha/beta on the host
};

bool op_valid(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

// Whether the stored matrix (`rows` x `cols`, leading dimension ld, column-major) lies in
// device memory; the last element is at (rows - 1) + (cols - 1) * ld.
bool operand_ok(const char* what, const float* p, long long rows, long long cols, long long ld) {
    if (rows == 0 || cols == 0) return true;
    size_t bytes = ((size_t)(rows - 1) + (size_t)(cols - 1) * (size_t)ld + 1) * sizeof(float);
    std::string why;
    if (emu::device_range(p, bytes, &why)) return true;
    emu::note(std::string("cublasSgemm: operand ") + what + ": " + why);
    return false;
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

// One product, accumulated in double (the library's order is unspecified; this is the exact
// value rounded once, the best any order can give).
int gemm_one(int ta, int tb, int m, int n, int k, float alpha, const float* A, int lda,
             const float* B, int ldb, float beta, float* C, int ldc) {
    const bool tra = ta != CUBLAS_OP_N, trb = tb != CUBLAS_OP_N;
    if (!operand_ok("A", A, tra ? k : m, tra ? m : k, lda) ||
        !operand_ok("B", B, trb ? n : k, trb ? k : n, ldb) || !operand_ok("C", C, m, n, ldc))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    // Packed copies of op(A) by rows and op(B) by columns: every dot product reads two
    // contiguous runs of k values.
    std::vector<float> ap((size_t)m * k), bp((size_t)n * k);
    for (int i = 0; i < m; ++i)
        for (int l = 0; l < k; ++l)
            ap[(size_t)i * k + l] = tra ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda];
    for (int j = 0; j < n; ++j)
        for (int l = 0; l < k; ++l)
            bp[(size_t)j * k + l] = trb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb];
    for (int j = 0; j < n; ++j) {
        const float* bj = &bp[(size_t)j * k];
        for (int i = 0; i < m; ++i) {
            const float* ai = &ap[(size_t)i * k];
            double acc = 0.0;
            for (int l = 0; l < k; ++l) acc += (double)ai[l] * (double)bj[l];
            float& c = C[i + (size_t)j * ldc];
            const double prev = beta == 0.0f ? 0.0 : (double)beta * (double)c;
            c = (float)((double)alpha * acc + prev);
        }
    }
    return CUBLAS_STATUS_SUCCESS;
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
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    return gemm_one(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
}

EMU_EXPORT int cublasSgemmStridedBatched(void* handle, int ta, int tb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long stride_a, const float* B, int ldb,
                                         long long stride_b, const float* beta, float* C,
                                         int ldc, long long stride_c, int batch) {
    auto* h = static_cast<Handle*>(handle);
    if (int r = gemm_checks(h, ta, tb, m, n, k, lda, ldb, ldc)) return r;
    if (!alpha || !beta || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    for (int b = 0; b < batch; ++b) {
        int r = gemm_one(ta, tb, m, n, k, *alpha, A + b * stride_a, lda, B + b * stride_b, ldb,
                         *beta, C + b * stride_c, ldc);
        if (r) return r;
    }
    return CUBLAS_STATUS_SUCCESS;
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
