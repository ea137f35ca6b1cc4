// The mean-squared-error data step of a surrogates.network.MLP on a CPU, in one call: forward, loss and every
// parameter's gradient, without a torch operator inside; a residual step's forward pass with tangents and its
// backward pass (tangent_forward, tangent_backward); and a whole ODE residual step in one call, the residual by
// a C callback (residual_step; see training/cpu_step.py). In float32 (the training steps) or float64 (a
// float64 L-BFGS polish): every routine is a template on the scalar type T, and each entry point takes the
// precision of its x.
//
// Rows are taken in tiles that stay in the core's cache. Per layer: the product by a register-blocked loop of
// this file on an AVX-512 machine (else the BLAS that torch links, sgemm_ and dgemm_), or a plain loop when one
// side is thin (an input or output layer of a few columns, where a product call is mostly overhead); the bias, the activation and its derivative in one pass over the product;
// backward, the derivative's product and the bias gradient in one pass. The loss is summed in double precision.
// Every sum has a fixed order: the same inputs give the same bits on every run of the same build.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);
extern "C" void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                       const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
                       const int* ldc);

namespace {

// scratch of at least `count` elements that starts on a 64-byte boundary (a cache line, one AVX-512 register):
// a thread's buffer, kept between calls. malloc gives 16-byte alignment, and a product or elementwise pass over
// rows that straddle cache lines runs slower; the arrays inside are cut at multiples of `lanes` elements.
template <typename T>
T* scratch(std::vector<T>& v, size_t count) {
  v.resize(count + 64 / sizeof(T));
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}
template <typename T>
constexpr size_t lanes() { return 64 / sizeof(T); }
inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A vector of V floats (GCC/Clang vector extensions: one AVX-512 register, two AVX2 ones elsewhere), loaded
// and stored at any T alignment. The thin loops keep their sums in these, in registers, across rows.
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float type __attribute__((vector_size(64), aligned(4), may_alias));
};
template <>
struct Lanes<double> {
  typedef double type __attribute__((vector_size(64), aligned(8), may_alias));
};
template <typename T>
using vec = typename Lanes<T>::type;
template <typename T>
constexpr int V = 64 / sizeof(T);  // lanes of a vec<T>: 16 floats, 8 doubles
template <typename T>
inline vec<T> vload(const T* p) { return *reinterpret_cast<const vec<T>*>(p); }
template <typename T>
inline void vstore(T* p, vec<T> v) { *reinterpret_cast<vec<T>*>(p) = v; }
template <typename T>
inline T hsum(vec<T> v) {
  T s = T(0.0);
  for (int j = 0; j < V<T>; ++j) s += v[j];
  return s;
}

// column-major C (m x n) = alpha op(A) op(B) + beta C, as the Fortran BLAS: without AVX-512, by the BLAS that
// torch links
#ifndef __AVX512F__
inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                 double beta, double* c, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
#else
// On an AVX-512 machine, a register-blocked kernel of our own, in both precisions. On the AMD EPYC (Zen 4) of
// CHANGELOG.md (2026-11-28), torch's MKL reached 84-93 GFLOP/s in float32 (sgemm_, its packing copies included) and
// 18-30 in float64 (dgemm_) on this code's shapes (a product with 64 inputs and outputs, 256 to 16,000 rows);
// this kernel 105-111 and 28-50. Row-major: C[i, j] (+)= sum_p A(i, p) B[p, j], A(i, p) = A[i * si + p * sp],
// in blocks of MR rows by NV vectors of columns whose sums stay in registers over the whole of p, B read in
// place (no packing: a 64 x 64 layer's weights are 16 kB, in L1). Sums in a fixed order.
template <typename T, int MR, int NV>
__attribute__((always_inline)) inline void pblock(const T* A, long si, long sp, const T* B, long ldb, T* C, long ldc,
                                                  int K, bool acc) {
  typedef vec<T> vt;
  constexpr int L = V<T>;
  vt c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) c[i][v] = acc ? *reinterpret_cast<const vt*>(C + i * ldc + v * L) : vt{};
  for (int p = 0; p < K; ++p) {
    vt b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const vt*>(B + p * ldb + v * L);
    for (int i = 0; i < MR; ++i) {
      const T a = A[i * si + p * sp];
      for (int v = 0; v < NV; ++v) c[i][v] += a * b[v];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<vt*>(C + i * ldc + v * L) = c[i][v];
}

template <typename T, int MR>
inline void pstrip(const T* A, long si, long sp, const T* B, long ldb, T* C, long ldc, int N, int K, bool acc) {
  constexpr int L = V<T>;
  int j = 0;
  for (; j + 4 * L <= N; j += 4 * L) pblock<T, MR, 4>(A, si, sp, B + j, ldb, C + j, ldc, K, acc);
  for (; j + L <= N; j += L) pblock<T, MR, 1>(A, si, sp, B + j, ldb, C + j, ldc, K, acc);
  for (; j < N; ++j)
    for (int i = 0; i < MR; ++i) {
      T s = acc ? C[i * ldc + j] : T(0);
      for (int p = 0; p < K; ++p) s += A[i * si + p * sp] * B[p * ldb + j];
      C[i * ldc + j] = s;
    }
}

template <typename T>
inline void pproduct(const T* A, long si, long sp, const T* B, long ldb, T* C, long ldc, int M, int N, int K,
                     bool acc) {
  constexpr int MR = 6;  // 6 x 4 accumulators, 4 of B and a broadcast: 29 of the 32 vector registers
  int i = 0;
  for (; i + MR <= M; i += MR) pstrip<T, MR>(A + i * si, si, sp, B, ldb, C + i * ldc, ldc, N, K, acc);
  for (; i < M; ++i) pstrip<T, 1>(A + i * si, si, sp, B, ldb, C + i * ldc, ldc, N, K, acc);
}

// the Fortran BLAS's column-major call (beta 0 or 1), done as the row-major product of the transposes
template <typename T>
inline void own_gemm(char ta, char tb, int m, int n, int k, const T* a, int lda, const T* b, int ldb, T beta, T* c,
                     int ldc) {
  const bool acc = beta != T(0);
  TORCH_CHECK(beta == T(0) || beta == T(1), "cpu_step: the product takes beta 0 or 1");
  const long si = tb == 'N' ? ldb : 1, sp = tb == 'N' ? 1 : ldb;  // A'(i, p) = op(B)(p, i)
  if (ta == 'N') {  // B'[p, j] = op(A)(j, p) = a[j + p * lda]: rows of a
    pproduct(b, si, sp, a, lda, c, ldc, n, m, k, acc);
    return;
  }
  thread_local std::vector<T> buf;  // op(A) = A^T: B'[p, j] = a[p + j * lda], gathered into rows
  T* t = scratch(buf, (size_t)k * m);
  for (int j = 0; j < m; ++j)
    for (int p = 0; p < k; ++p) t[(size_t)p * m + j] = a[p + (size_t)j * lda];
  pproduct(b, si, sp, t, m, c, ldc, n, m, k, acc);
}

inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  own_gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

inline void gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                 double beta, double* c, int ldc) {
  own_gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
}
#endif

template <typename T>
constexpr torch::ScalarType scalar() { return std::is_same<T, double>::value ? torch::kFloat64 : torch::kFloat32; }
template <typename T>
constexpr const char* name() { return std::is_same<T, double>::value ? "float64" : "float32"; }

constexpr int THIN = 8;  // a side this narrow goes through a plain loop instead of the BLAS

// exp(x) for float, vectorisable (a Cephes-style polynomial on x - n ln 2, then 2^n by exponent bits):
// within 2 ulp of expf on [-87, 88]; clamped outside (exp(-87) ~ 1.6e-38, exp(88) ~ 1.7e38); NaN stays NaN.
__attribute__((always_inline)) inline float fexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return p * s;
}

// exp(x) for double, vectorisable: the Taylor polynomial of degree 13 on r = x - n ln 2 (|r| <= ln 2 / 2, where
// its remainder is below 1e-17), then 2^n by exponent bits: within a few ulp of exp on [-708, 709]; clamped
// outside (exp(-708) ~ 3e-308); NaN stays NaN.
__attribute__((always_inline)) inline double fexp(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double n = std::floor(x * 1.4426950408889634074 + 0.5);
  double r = x - n * 6.93147180369123816490e-1;  // ln 2 in two parts (Cephes): n * the first is exact
  r = r - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  double s;
  std::memcpy(&s, &bits, sizeof s);
  return p * s;
}

enum Act : int64_t { IDENTITY = 0, SIGMOID, TANH, SILU, RELU, LEAKY_RELU, ELU, GELU, SOFTPLUS };

// one row of a layer: z = c + bias; a = f(z); d = f'(z)
template <typename T>
__attribute__((always_inline)) inline void act_row(int64_t code, const T* __restrict c, const T* __restrict bias, T* __restrict a,
                    T* __restrict d, int n) {
  switch (code) {
    case SIGMOID:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T s = T(1.0) / (T(1.0) + fexp(-(c[j] + bias[j])));
        a[j] = s;
        d[j] = s - s * s;
      }
      break;
    case TANH:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T t = T(2.0) / (T(1.0) + fexp(-T(2.0) * (c[j] + bias[j]))) - T(1.0);
        a[j] = t;
        d[j] = T(1.0) - t * t;
      }
      break;
    case SILU:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T s = T(1.0) / (T(1.0) + fexp(-z));
        const T v = z * s;
        a[j] = v;
        d[j] = s * (T(1.0) + z - v);
      }
      break;
    case RELU:
    case LEAKY_RELU: {
      const T slope = code == RELU ? T(0.0) : T(0.01);
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        a[j] = z > T(0.0) ? z : z * slope;
        d[j] = z > T(0.0) ? T(1.0) : slope;
      }
      break;
    }
    case ELU:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T e = std::expm1(z);
        a[j] = z > T(0.0) ? z : e;
        d[j] = z > T(0.0) ? T(1.0) : e + T(1.0);
      }
      break;
    case GELU:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T cdf = T(0.5) * (T(1.0) + std::erf(z * T(0.70710678118654752)));
        a[j] = z * cdf;
        d[j] = cdf + z * std::exp(-T(0.5) * z * z) * T(0.39894228040143268);
      }
      break;
    case SOFTPLUS:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        a[j] = z > T(20.0) ? z : std::log1p(std::exp(z));
        d[j] = z > T(20.0) ? T(1.0) : T(1.0) / (T(1.0) + std::exp(-z));
      }
      break;
    default:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        a[j] = c[j] + bias[j];
        d[j] = T(1.0);
      }
  }
}

// one row of a layer with its tangent (forward mode): z = c + bias and zt given; a = f(z), d1 = f'(z),
// at = f'(z) zt and q = f''(z) zt (the backward pass needs d1 and q: gz = g f' + gt f'' zt, gzt = gt f')
template <typename T>
__attribute__((always_inline)) inline void act_tangent_row(int64_t code, const T* __restrict c,
                                                           const T* __restrict bias, const T* __restrict zt,
                                                           T* __restrict a, T* __restrict d1,
                                                           T* __restrict at, T* __restrict q, int n) {
  switch (code) {
    case SIGMOID:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T s = T(1.0) / (T(1.0) + fexp(-(c[j] + bias[j])));
        const T f1 = s - s * s;
        a[j] = s;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = f1 * (T(1.0) - T(2.0) * s) * zt[j];
      }
      break;
    case TANH:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T t = T(2.0) / (T(1.0) + fexp(-T(2.0) * (c[j] + bias[j]))) - T(1.0);
        const T f1 = T(1.0) - t * t;
        a[j] = t;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = -T(2.0) * t * f1 * zt[j];
      }
      break;
    case SILU:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T s = T(1.0) / (T(1.0) + fexp(-z));
        const T v = z * s;
        const T f1 = s * (T(1.0) + z - v);
        a[j] = v;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = s * (T(1.0) - s) * (T(2.0) + z - T(2.0) * v) * zt[j];
      }
      break;
    case RELU:
    case LEAKY_RELU: {
      const T slope = code == RELU ? T(0.0) : T(0.01);
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T f1 = z > T(0.0) ? T(1.0) : slope;
        a[j] = z > T(0.0) ? z : z * slope;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = T(0.0);
      }
      break;
    }
    case ELU:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T e = std::expm1(z);
        const T f1 = z > T(0.0) ? T(1.0) : e + T(1.0);
        a[j] = z > T(0.0) ? z : e;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = z > T(0.0) ? T(0.0) : (e + T(1.0)) * zt[j];
      }
      break;
    case GELU:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T cdf = T(0.5) * (T(1.0) + std::erf(z * T(0.70710678118654752)));
        const T phi = std::exp(-T(0.5) * z * z) * T(0.39894228040143268);
        const T f1 = cdf + z * phi;
        a[j] = z * cdf;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = phi * (T(2.0) - z * z) * zt[j];
      }
      break;
    case SOFTPLUS:
      for (int j = 0; j < n; ++j) {
        const T z = c[j] + bias[j];
        const T s = T(1.0) / (T(1.0) + std::exp(-z));
        const T f1 = z > T(20.0) ? T(1.0) : s;
        a[j] = z > T(20.0) ? z : std::log1p(std::exp(z));
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = z > T(20.0) ? T(0.0) : s * (T(1.0) - s) * zt[j];
      }
      break;
    default:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        a[j] = c[j] + bias[j];
        d1[j] = T(1.0);
        at[j] = zt[j];
        q[j] = T(0.0);
      }
  }
}

template <typename T>
struct Layer {
  int k, n;  // inputs, outputs
  const T* W;  // n x k, row-major (torch's Linear.weight)
  const T* b;
  T* gW;
  T* gb;
  int64_t act;
};

// z[r, :] = prev[r, :] W^T for a layer of K (thin) inputs, row by row in L1 (`row`), each row handed to
// epi(r, row) (the bias and activation)
template <int K, typename T, class Epi>
void rows_thin_inputs(const Layer<T>& L, const T* prev, int rows, T* wt, T* row, Epi&& epi) {
  const int n = L.n, nv = n - n % V<T>;
  for (int c = 0; c < K; ++c)
    for (int j = 0; j < n; ++j) wt[c * n + j] = L.W[j * K + c];
  for (int r = 0; r < rows; ++r) {
    const T* ar = prev + (size_t)r * K;
    for (int j = 0; j < nv; j += V<T>) {
      vec<T> z = vload(wt + j) * ar[0];
      for (int c = 1; c < K; ++c) z += vload(wt + c * n + j) * ar[c];
      vstore(row + j, z);
    }
    for (int j = nv; j < n; ++j) {
      T z = wt[j] * ar[0];
      for (int c = 1; c < K; ++c) z += wt[c * n + j] * ar[c];
      row[j] = z;
    }
    epi(r, row);
  }
}

// the same for a layer of N (thin) outputs: one dot product each
template <int N, typename T, class Epi>
void rows_thin_outputs(const Layer<T>& L, const T* prev, int rows, T* row, Epi&& epi) {
  const int k = L.k, kv = k - k % V<T>;
  for (int r = 0; r < rows; ++r) {
    const T* ar = prev + (size_t)r * k;
    vec<T> acc[N] = {};
    for (int c = 0; c < kv; c += V<T>) {
      const vec<T> x = vload(ar + c);
      for (int o = 0; o < N; ++o) acc[o] += x * vload(L.W + (size_t)o * k + c);
    }
    for (int o = 0; o < N; ++o) {
      T s = hsum<T>(acc[o]);
      for (int c = kv; c < k; ++c) s += ar[c] * L.W[(size_t)o * k + c];
      row[o] = s;
    }
    epi(r, row);
  }
}

// sums over rows of wide[r, j + jj] * thin[r, c], for a block of V columns j.. of `wide` (acc[c][jj]) or one
// column j (s[c]): the thin layers' weight gradients, summed in registers
template <int M, typename T>
inline void outer_sums(const T* wide, int cols, const T* thin, int rows, int j, vec<T>* acc) {
  for (int c = 0; c < M; ++c) acc[c] = vec<T>{};
  for (int r = 0; r < rows; ++r) {
    const vec<T> x = vload(wide + (size_t)r * cols + j);
    for (int c = 0; c < M; ++c) acc[c] += x * thin[(size_t)r * M + c];
  }
}

template <int M, typename T>
inline void outer_sums_one(const T* wide, int cols, const T* thin, int rows, int j, T* s) {
  for (int c = 0; c < M; ++c) s[c] = T(0.0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < M; ++c) s[c] += wide[(size_t)r * cols + j] * thin[(size_t)r * M + c];
}

// gW (n x K) += g^T a for K (thin) inputs
template <int K, typename T>
void weight_gradient_thin_inputs(const Layer<T>& L, const T* g, const T* a, int rows) {
  const int n = L.n, nv = n - n % V<T>;
  vec<T> acc[K];
  T s[K];
  for (int j = 0; j < nv; j += V<T>) {
    outer_sums<K>(g, n, a, rows, j, acc);
    for (int c = 0; c < K; ++c)
      for (int jj = 0; jj < V<T>; ++jj) L.gW[(j + jj) * K + c] += acc[c][jj];
  }
  for (int j = nv; j < n; ++j) {
    outer_sums_one<K>(g, n, a, rows, j, s);
    for (int c = 0; c < K; ++c) L.gW[j * K + c] += s[c];
  }
}

// gW (N x k) += g^T a for N (thin) outputs
template <int N, typename T>
void weight_gradient_thin_outputs(const Layer<T>& L, const T* g, const T* a, int rows) {
  const int k = L.k, kv = k - k % V<T>;
  vec<T> acc[N];
  T s[N];
  for (int c = 0; c < kv; c += V<T>) {
    outer_sums<N>(a, k, g, rows, c, acc);
    for (int o = 0; o < N; ++o) vstore(L.gW + (size_t)o * k + c, vload(L.gW + (size_t)o * k + c) + acc[o]);
  }
  for (int c = kv; c < k; ++c) {
    outer_sums_one<N>(a, k, g, rows, c, s);
    for (int o = 0; o < N; ++o) L.gW[(size_t)o * k + c] += s[o];
  }
}

// ga (rows x k) *= d, and gb (k) += its column sums (after the input gradient's product)
template <typename T>
void scale_and_sum(const T* d, int rows, int k, T* ga, T* gb) {
  const int kv = k - k % V<T>;
  for (int c = 0; c < kv; c += V<T>) {
    vec<T> sum = {};
    for (int r = 0; r < rows; ++r) {
      const vec<T> v = vload(ga + (size_t)r * k + c) * vload(d + (size_t)r * k + c);
      vstore(ga + (size_t)r * k + c, v);
      sum += v;
    }
    vstore(gb + c, vload(gb + c) + sum);
  }
  for (int c = kv; c < k; ++c) {
    T sum = T(0.0);
    for (int r = 0; r < rows; ++r) {
      const T v = ga[(size_t)r * k + c] * d[(size_t)r * k + c];
      ga[(size_t)r * k + c] = v;
      sum += v;
    }
    gb[c] += sum;
  }
}

// the thin loops' width as a template argument (1 to THIN)
#define THIN_CASES(width, CALL) \
  switch (width) {              \
    case 1: CALL(1); break;     \
    case 2: CALL(2); break;     \
    case 3: CALL(3); break;     \
    case 4: CALL(4); break;     \
    case 5: CALL(5); break;     \
    case 6: CALL(6); break;     \
    case 7: CALL(7); break;     \
    default: CALL(8);           \
  }

// c (rows x n) = prev (rows x k) W^T, each row then handed to epi(r, c_row): a thin layer (a few inputs or
// outputs) row by row, the row in L1 (`row`); a wide one by one BLAS product into `c`
template <typename T, class Epi>
void rows_product(const Layer<T>& L, const T* prev, int rows, T* c, T* wt, T* row, Epi&& epi) {
  if (L.k <= THIN) {
#define PRODUCT_K(K) rows_thin_inputs<K>(L, prev, rows, wt, row, epi)
    THIN_CASES(L.k, PRODUCT_K)
  } else if (L.n <= THIN) {
#define PRODUCT_N(N) rows_thin_outputs<N>(L, prev, rows, row, epi)
    THIN_CASES(L.n, PRODUCT_N)
  } else {
    gemm('T', 'N', L.n, rows, L.k, L.W, L.k, prev, L.k, T(0.0), c, L.n);
    for (int r = 0; r < rows; ++r) epi(r, c + (size_t)r * L.n);
  }
}

// a layer's forward for a tile: a, d (rows x n) = f, f' of (prev W^T + b), the bias and activation in the pass
// that reads the product
template <typename T>
void forward_layer(const Layer<T>& L, const T* prev, int rows, T* c, T* wt, T* row, T* a, T* d) {
  const int n = L.n;
  rows_product(L, prev, rows, c, wt, row,
               [&](int r, const T* z) { act_row(L.act, z, L.b, a + (size_t)r * n, d + (size_t)r * n, n); });
}

// gW (n x k) += g^T (n x rows) a (rows x k)
template <typename T>
void weight_gradient(const Layer<T>& L, const T* g, const T* a, int rows) {
  if (L.k <= THIN) {
#define WG_K(K) weight_gradient_thin_inputs<K>(L, g, a, rows)
    THIN_CASES(L.k, WG_K)
  } else if (L.n <= THIN) {
#define WG_N(N) weight_gradient_thin_outputs<N>(L, g, a, rows)
    THIN_CASES(L.n, WG_N)
  } else {
    gemm('N', 'T', L.k, L.n, rows, a, L.k, g, L.n, T(1.0), L.gW, L.k);
  }
}

// out (rows x n) = in (rows x k) W^T, without the bias
template <typename T>
void linear(const Layer<T>& L, const T* in, int rows, T* out, T* wt, T* row) {
  const int n = L.n;
  rows_product(L, in, rows, out, wt, row, [&](int r, const T* z) {
    T* dst = out + (size_t)r * n;
    if (z != dst) std::memcpy(dst, z, sizeof(T) * n);  // a wide layer's product is already there
  });
}

// out (rows x k) = g (rows x n) W (n x k)
template <int N, typename T>
void backprop_thin_outputs(const Layer<T>& L, const T* g, int rows, T* out) {
  const int k = L.k;
  for (int r = 0; r < rows; ++r) {
    T* o_ = out + (size_t)r * k;
    const T* gr = g + (size_t)r * N;
#pragma omp simd
    for (int c = 0; c < k; ++c) {
      T v = gr[0] * L.W[c];
      for (int o = 1; o < N; ++o) v += gr[o] * L.W[(size_t)o * k + c];
      o_[c] = v;
    }
  }
}

template <typename T>
void backprop(const Layer<T>& L, const T* g, int rows, T* out) {
  if (L.n <= THIN) {
#define BP_N(N) backprop_thin_outputs<N>(L, g, rows, out)
    THIN_CASES(L.n, BP_N)
  } else {
    gemm('N', 'N', L.k, rows, L.n, L.W, L.k, g, L.n, T(0.0), out, L.k);
  }
}

// ga (rows x k) = (g (rows x n) W (n x k)) * d, the layer below's pre-activation cotangent, and its bias
// gradient gb (k) += the column sums of ga
template <typename T>
void input_gradient(const Layer<T>& L, const T* g, int rows, const T* d, T* ga, T* gb) {
  backprop(L, g, rows, ga);
  scale_and_sum(d, rows, L.k, ga, gb);
}

// through a layer's activation, in place: g <- g d1 + gt q, gt <- gt d1 (cotangents of the pre-activation and
// its tangent), and gb (n) += the column sums of the new g
template <typename T>
void through_activation(const T* d1, const T* q, int rows, int n, T* g, T* gt, T* gb) {
  const int nv = n - n % V<T>;
  for (int c = 0; c < nv; c += V<T>) {
    vec<T> sum = {};
    for (int r = 0; r < rows; ++r) {
      const size_t j = (size_t)r * n + c;
      const vec<T> d = vload(d1 + j), t = vload(gt + j);
      const vec<T> v = vload(g + j) * d + t * vload(q + j);
      vstore(g + j, v);
      vstore(gt + j, t * d);
      sum += v;
    }
    vstore(gb + c, vload(gb + c) + sum);
  }
  for (int c = nv; c < n; ++c) {
    T sum = T(0.0);
    for (int r = 0; r < rows; ++r) {
      const size_t j = (size_t)r * n + c;
      const T v = g[j] * d1[j] + gt[j] * q[j];
      g[j] = v;
      gt[j] *= d1[j];
      sum += v;
    }
    gb[c] += sum;
  }
}

// the layers, checked: contiguous float32 CPU tensors, widths that chain from `inputs`; gW, gb may be null
// (a forward pass only)
template <typename T>
std::vector<Layer<T>> make_layers(const char* fn, int64_t inputs, const std::vector<torch::Tensor>& W,
                               const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>* gW,
                               const std::vector<torch::Tensor>* gb, const std::vector<int64_t>& acts) {
  const size_t nl = W.size();
  TORCH_CHECK(nl >= 1 && b.size() == nl && acts.size() == nl && (!gW || gW->size() == nl) && (!gb || gb->size() == nl),
              "cpu_step.", fn, ": one weight, bias, gradient pair and activation per layer");
  std::vector<Layer<T>> layers(nl);
  for (size_t i = 0; i < nl; ++i) {
    std::vector<const torch::Tensor*> ts = {&W[i], &b[i]};
    if (gW) ts.push_back(&(*gW)[i]);
    if (gb) ts.push_back(&(*gb)[i]);
    for (const auto* t : ts)
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == scalar<T>() && t->is_contiguous(), "cpu_step.", fn,
                  ": parameters and gradients must be contiguous ", name<T>(), " CPU tensors");
    const int k = static_cast<int>(W[i].size(1)), n = static_cast<int>(W[i].size(0));
    const int64_t before = i == 0 ? inputs : layers[i - 1].n;
    TORCH_CHECK(k == before, "cpu_step.", fn, ": layer ", i, " takes ", k, " inputs, the layer before gives ", before);
    TORCH_CHECK(b[i].numel() == n, "cpu_step.", fn, ": layer ", i, " has ", n, " outputs and ", b[i].numel(), " biases");
    layers[i] = {k, n, W[i].data_ptr<T>(), b[i].data_ptr<T>(), gW ? (*gW)[i].data_ptr<T>() : nullptr,
                 gb ? (*gb)[i].data_ptr<T>() : nullptr, acts[i]};
  }
  return layers;
}

template <typename T>
void check_rows(const char* fn, const torch::Tensor& t, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == scalar<T>() && t.is_contiguous(), "cpu_step.", fn, ": ",
              what, " must be a contiguous ", name<T>(), " CPU tensor (the network's precision)");
  TORCH_CHECK(t.dim() == 2 && t.size(0) >= rows && t.size(1) == cols, "cpu_step.", fn, ": ", what, " must have at least ",
              rows, " rows of ", cols, " columns, got ", t.sizes());
}

template <typename T>
void zero_gradients(const std::vector<Layer<T>>& layers) {
  for (const auto& L : layers) {
    std::fill(L.gW, L.gW + (size_t)L.n * L.k, T(0.0));
    std::fill(L.gb, L.gb + L.n, T(0.0));
  }
}

}  // namespace

// weight * mean((net(x) - y)^2) for scaled rows x (B x inputs), y (B x outputs); its gradient written into
// (add = false) or added to (add = true) gW, gb. Returns the unweighted mean squared error (a 0-d T tensor).
template <typename T>
torch::Tensor data_step_t(const torch::Tensor& x, const torch::Tensor& y, const std::vector<torch::Tensor>& W,
                        const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                        const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts, double weight,
                        bool add, int64_t tile) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0) && x.size(0) >= 1,
              "cpu_step.data_step: x and y must be 2-D with the same number (>= 1) of rows");
  const std::vector<Layer<T>> layers = make_layers<T>("data_step", x.size(1), W, b, &gW, &gb, acts);
  const int nl = static_cast<int>(layers.size());
  int maxw = static_cast<int>(x.size(1));
  for (const auto& L : layers) maxw = std::max(maxw, L.n);
  const int out = layers[nl - 1].n;
  TORCH_CHECK(y.size(1) == out, "cpu_step.data_step: y has ", y.size(1), " columns, the network ", out, " outputs");
  for (const auto* t : {&x, &y})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == scalar<T>() && t->is_contiguous(),
                "cpu_step.data_step: x and y must be contiguous ", name<T>(), " CPU tensors (the network's precision)");
  const int B = static_cast<int>(x.size(0));
  const int TS = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(B, tile)));

  // scratch: per layer its output a and derivative d for one tile; two cotangent buffers; the product; the
  // small transposes and accumulators of the thin loops
  const size_t per = round_up((size_t)TS * maxw, lanes<T>());
  thread_local std::vector<T> buf;
  T* base = scratch(buf, per * (2 * nl + 3) + (size_t)maxw * (THIN + 1) + 64);
  std::vector<T*> A(nl), D(nl);
  for (int i = 0; i < nl; ++i) {
    A[i] = base + per * (2 * i);
    D[i] = base + per * (2 * i + 1);
  }
  T* G0 = base + per * (2 * nl);
  T* G1 = G0 + per;
  T* C = G1 + per;
  T* small = C + per;               // maxw * THIN: a thin layer's transpose
  T* rowbuf = small + (size_t)maxw * THIN;  // maxw: one row's pre-activations

  if (!add) zero_gradients(layers);
  const T* X = x.data_ptr<T>();
  const T* Y = y.data_ptr<T>();
  const T scale = static_cast<T>(2.0 * weight / ((double)B * out));
  double sse = 0.0;
  for (int r0 = 0; r0 < B; r0 += TS) {
    const int rows = std::min(TS, B - r0);
    const T* xin = X + (size_t)r0 * layers[0].k;
    const T* prev = xin;
    for (int i = 0; i < nl; ++i) {
      const Layer<T>& L = layers[i];
      forward_layer(L, prev, rows, C, small, rowbuf, A[i], D[i]);
      prev = A[i];
    }
    // the loss and the cotangent of the last pre-activation
    const T* yr = Y + (size_t)r0 * out;
    const T* z = A[nl - 1];
    const T* d = D[nl - 1];
    T* g = G0;
    T* gbl = layers[nl - 1].gb;
    for (int r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int o = 0; o < out; ++o) {
        const size_t j = (size_t)r * out + o;
        const T e = z[j] - yr[j];
        s += (double)e * e;
        g[j] = scale * e * d[j];
        gbl[o] += g[j];
      }
      sse += s;
    }
    for (int i = nl - 1; i >= 0; --i) {
      const Layer<T>& L = layers[i];
      const T* a = i == 0 ? xin : A[i - 1];
      weight_gradient(L, g, a, rows);
      if (i > 0) {  // the layer below's cotangent and bias gradient
        T* ga = g == G0 ? G1 : G0;
        input_gradient(L, g, rows, D[i - 1], ga, layers[i - 1].gb);
        g = ga;
      }
    }
  }
  return torch::tensor(static_cast<T>(sse / ((double)B * out)), torch::dtype(scalar<T>()));
}

namespace {

// what both tangent passes check and share: the layers, the direction, the buffers (two blocks of n rows per
// layer: AA = [a; at], DQ = [f'(z); f''(z) zt])
template <typename T>
struct TangentArgs {
  std::vector<Layer<T>> layers;
  int rows, inputs, maxw;
  bool shared;
};

template <typename T>
TangentArgs<T> tangent_args(const char* fn, const torch::Tensor& x, const torch::Tensor& v,
                         const std::vector<torch::Tensor>& W, const std::vector<torch::Tensor>& b,
                         const std::vector<torch::Tensor>* gW, const std::vector<torch::Tensor>* gb,
                         const std::vector<int64_t>& acts, const std::vector<torch::Tensor>& AA,
                         const std::vector<torch::Tensor>& DQ) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1, "cpu_step.", fn, ": x must be 2-D with >= 1 rows");
  TangentArgs<T> t;
  t.rows = static_cast<int>(x.size(0));
  t.inputs = static_cast<int>(x.size(1));
  check_rows<T>(fn, x, t.rows, t.inputs, "x");
  t.layers = make_layers<T>(fn, t.inputs, W, b, gW, gb, acts);
  t.shared = v.dim() == 1;
  if (t.shared) {
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == scalar<T>() && v.is_contiguous() && v.numel() == t.inputs,
                "cpu_step.", fn, ": a shared direction v must be a contiguous ", name<T>(), " CPU vector of ", t.inputs);
  } else {
    check_rows<T>(fn, v, t.rows, t.inputs, "v");
  }
  const size_t nl = t.layers.size();
  TORCH_CHECK(AA.size() == nl && DQ.size() == nl, "cpu_step.", fn, ": two buffers per layer");
  t.maxw = t.inputs;
  for (size_t i = 0; i < nl; ++i) {
    t.maxw = std::max(t.maxw, t.layers[i].n);
    check_rows<T>(fn, AA[i], 2 * (int64_t)t.rows, t.layers[i].n, "a buffer");
    check_rows<T>(fn, DQ[i], 2 * (int64_t)t.rows, t.layers[i].n, "a buffer");
  }
  return t;
}

}  // namespace

namespace {

// A tangent pass over more than TANGENT_WHOLE rows goes through the network in tiles of TANGENT_TILE rows (each
// with its tangents: twice as many), so that a tile's products, activations and cotangents stay in the core's
// cache: hh_m's float64 polish passes 8,001 rows, whose per-layer arrays (16,002 x 64 doubles, 8 MB each) would
// otherwise go to memory and back between every two passes. Up to TANGENT_WHOLE rows in one piece (the
// training steps' 256 to 2,048 collocation rows: the same sums, in the same order, as before tiles existed).
constexpr int TANGENT_TILE = 256;
constexpr int TANGENT_WHOLE = 2048;

inline int tangent_tile(int n) { return n <= TANGENT_WHOLE ? n : TANGENT_TILE; }

// Where one tile's arrays of each layer are: values a and tangents at (m rows each; adjacent, at = a + m w, where
// the tile's values and tangents can go through a product together), f'(z) and f''(z) zt.
template <typename T>
struct TileArrays {
  std::vector<T*> a, at, d1, q;
  explicit TileArrays(size_t nl) : a(nl), at(nl), d1(nl), q(nl) {}
};

// scratch of a tile's forward pass: the product C (2m rows of the widest layer), the first layer's stacked x and
// per-row v (XV), the thin loops' transpose and row, and for a shared direction the first layer's tangent
// ztrow = W v (the same on every row)
template <typename T>
struct ForwardScratch {
  T *C, *XV, *wt, *row;
  const T* ztrow;
};

// The forward pass with tangents of one tile of m rows: x (m x inputs) and v (m x inputs, or null for the
// shared direction whose first-layer tangent is s.ztrow); writes every layer's arrays in `t`.
template <typename T>
void tile_forward(const std::vector<Layer<T>>& layers, const T* x, const T* v, int m, const TileArrays<T>& t,
                  const ForwardScratch<T>& s) {
  const int nl = static_cast<int>(layers.size());
  for (int i = 0; i < nl; ++i) {
    const Layer<T>& L = layers[i];
    const int w = L.n, k = L.k;
    const T* zt = s.C + (size_t)m * w;  // the tangents' products follow the values'
    if (i == 0 && !v) {  // the tangent is ztrow on every row: each row's activation as its product is made
      rows_product(L, x, m, s.C, s.wt, s.row, [&](int r, const T* z) {
        const size_t o = (size_t)r * w;
        act_tangent_row(L.act, z, L.b, s.ztrow, t.a[i] + o, t.d1[i] + o, t.at[i] + o, t.q[i] + o, w);
      });
      continue;
    }
    if (i == 0) {
      std::memcpy(s.XV, x, sizeof(T) * m * k);
      std::memcpy(s.XV + (size_t)m * k, v, sizeof(T) * m * k);
      linear(L, s.XV, 2 * m, s.C, s.wt, s.row);
    } else if (t.at[i - 1] == t.a[i - 1] + (size_t)m * k) {  // values and tangents adjacent: one product
      linear(L, t.a[i - 1], 2 * m, s.C, s.wt, s.row);
    } else {
      linear(L, t.a[i - 1], m, s.C, s.wt, s.row);
      linear(L, t.at[i - 1], m, s.C + (size_t)m * w, s.wt, s.row);
    }
    for (int r = 0; r < m; ++r) {
      const size_t o = (size_t)r * w;
      act_tangent_row(L.act, s.C + o, L.b, zt + o, t.a[i] + o, t.d1[i] + o, t.at[i] + o, t.q[i] + o, w);
    }
  }
}

// The backward pass of one tile after tile_forward (same x, v, m and arrays): G holds the cotangents of the
// outputs and of their tangents, stacked ([g; gt], m rows each), G2 is scratch of the same size (2m rows of the
// widest layer); both are overwritten. Every parameter's gradient is added to gW, gb; for a shared direction
// the first layer's tangent part is left to the caller: colsum (its width) += the column sums of its gt.
template <typename T>
void tile_backward(const std::vector<Layer<T>>& layers, const T* x, const T* v, int m, const TileArrays<T>& t,
                   T* G, T* G2, T* colsum) {
  for (int i = static_cast<int>(layers.size()) - 1; i >= 0; --i) {
    const Layer<T>& L = layers[i];
    const int w = L.n, k = L.k;
    T* gt = G + (size_t)m * w;
    through_activation(t.d1[i], t.q[i], m, w, G, gt, L.gb);
    if (i > 0) {
      if (t.at[i - 1] == t.a[i - 1] + (size_t)m * k) {  // [g; gt]^T [a; at] in one product
        weight_gradient(L, G, t.a[i - 1], 2 * m);
      } else {
        weight_gradient(L, G, t.a[i - 1], m);
        weight_gradient(L, gt, t.at[i - 1], m);
      }
      backprop(L, G, 2 * m, G2);
      std::swap(G, G2);
    } else {
      weight_gradient(L, G, x, m);
      if (!v) {  // the layer's input tangent is v on every row: gW += (column sums of gt) v^T, by the caller
        for (int r = 0; r < m; ++r)
#pragma omp simd
          for (int j = 0; j < w; ++j) colsum[j] += gt[(size_t)r * w + j];
      } else {
        weight_gradient(L, gt, v, m);
      }
    }
  }
}

// the first layer's tangent for a shared direction: ztrow = W v
template <typename T>
void shared_tangent(const Layer<T>& L, const T* v, T* ztrow) {
  for (int j = 0; j < L.n; ++j) {
    T s = T(0.0);
    for (int c = 0; c < L.k; ++c) s += L.W[(size_t)j * L.k + c] * v[c];
    ztrow[j] = s;
  }
}

// and its share of the first layer's weight gradient: gW += colsum v^T
template <typename T>
void shared_tangent_gradient(const Layer<T>& L, const T* v, const T* colsum) {
  for (int j = 0; j < L.n; ++j)
    for (int c = 0; c < L.k; ++c) L.gW[(size_t)j * L.k + c] += colsum[j] * v[c];
}

// a tile's arrays inside the whole-call buffers AA = [a (n rows); at (n rows)], DQ = [f'; f'' zt] (rows r0..)
template <typename T>
TileArrays<T> arrays_in(const std::vector<Layer<T>>& layers, const std::vector<torch::Tensor>& AA,
                        const std::vector<torch::Tensor>& DQ, int n, int r0) {
  TileArrays<T> t(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const int w = layers[i].n;
    t.a[i] = AA[i].data_ptr<T>() + (size_t)r0 * w;
    t.at[i] = AA[i].data_ptr<T>() + (size_t)(n + r0) * w;
    t.d1[i] = DQ[i].data_ptr<T>() + (size_t)r0 * w;
    t.q[i] = DQ[i].data_ptr<T>() + (size_t)(n + r0) * w;
  }
  return t;
}

}  // namespace

// The forward pass with tangents (forward mode), for rows x (n x inputs) and a direction v: one for every
// row (1-D, `inputs` long) or one per row (n x inputs). Per layer, AA gets a = f(z) in its first n rows and
// at = f'(z) zt in the next n, DQ f'(z) and f''(z) zt the same way (buffers of at least 2n rows); the values
// and tangents go through each layer's product together (one BLAS call for a tile, two where the tile's values
// and tangents are not adjacent). The network's outputs and their derivatives along v are AA[-1][:n] and
// AA[-1][n:2n]. The backward pass reads the same buffers.
template <typename T>
void tangent_forward_t(const torch::Tensor& x, const torch::Tensor& v, const std::vector<torch::Tensor>& W,
                       const std::vector<torch::Tensor>& b, const std::vector<int64_t>& acts,
                       const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ) {
  const TangentArgs<T> t = tangent_args<T>("tangent_forward", x, v, W, b, nullptr, nullptr, acts, AA, DQ);
  const int n = t.rows, tt = tangent_tile(n), k = t.inputs;
  const size_t per = round_up((size_t)2 * tt * t.maxw, lanes<T>());
  thread_local std::vector<T> buf;
  ForwardScratch<T> s;
  s.C = scratch(buf, 2 * per + (size_t)t.maxw * (THIN + 2) + 64);
  s.XV = s.C + per;  // a tile's x and per-row v, stacked
  s.wt = s.XV + per;
  s.row = s.wt + (size_t)t.maxw * THIN;
  T* ztrow = s.row + t.maxw;
  s.ztrow = ztrow;
  const T* X = x.data_ptr<T>();
  const T* VV = v.data_ptr<T>();
  if (t.shared) shared_tangent(t.layers[0], VV, ztrow);
  for (int r0 = 0; r0 < n; r0 += tt) {
    const int m = std::min(tt, n - r0);
    tile_forward(t.layers, X + (size_t)r0 * k, t.shared ? nullptr : VV + (size_t)r0 * k, m,
                 arrays_in<T>(t.layers, AA, DQ, n, r0), s);
  }
}

// The backward pass after tangent_forward (same x, v and buffers): gz, gzt (n x outputs) are the cotangents of
// the outputs and of their derivatives along v; every parameter's gradient is written into (add = false) or
// added to (add = true) gW, gb. A tile's cotangents of values and tangents are kept stacked, so each layer's
// input gradient is one BLAS call, and so is its weight gradient (g^T a + gt^T at) where values and tangents
// are adjacent (one piece).
template <typename T>
void tangent_backward_t(const torch::Tensor& x, const torch::Tensor& v, const torch::Tensor& gz,
                        const torch::Tensor& gzt, const std::vector<torch::Tensor>& W,
                        const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                        const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts,
                        const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ, bool add) {
  const char* fn = "tangent_backward";
  const TangentArgs<T> t = tangent_args<T>(fn, x, v, W, b, &gW, &gb, acts, AA, DQ);
  const int n = t.rows, nl = static_cast<int>(t.layers.size()), tt = tangent_tile(n), k = t.inputs;
  const int out = t.layers[nl - 1].n;
  check_rows<T>(fn, gz, n, out, "gz");
  check_rows<T>(fn, gzt, n, out, "gzt");
  const size_t per = round_up((size_t)2 * tt * t.maxw, lanes<T>());
  thread_local std::vector<T> buf;
  T *G0 = scratch(buf, 2 * per + t.maxw + 64), *G1 = G0 + per, *colsum = G1 + per;
  const T* X = x.data_ptr<T>();
  const T* VV = v.data_ptr<T>();
  const T* GZ = gz.data_ptr<T>();
  const T* GZT = gzt.data_ptr<T>();
  if (!add) zero_gradients(t.layers);
  if (t.shared) std::fill(colsum, colsum + t.layers[0].n, T(0.0));
  for (int r0 = 0; r0 < n; r0 += tt) {
    const int m = std::min(tt, n - r0);
    std::memcpy(G0, GZ + (size_t)r0 * out, sizeof(T) * m * out);
    std::memcpy(G0 + (size_t)m * out, GZT + (size_t)r0 * out, sizeof(T) * m * out);
    tile_backward(t.layers, X + (size_t)r0 * k, t.shared ? nullptr : VV + (size_t)r0 * k, m,
                  arrays_in<T>(t.layers, AA, DQ, n, r0), G0, G1, colsum);
  }
  if (t.shared) shared_tangent_gradient(t.layers[0], VV, colsum);
}

// A residual's loss and gradient, computed per tile of rows by a C callback (training/cpu_residual.py's
// `tile`, generated from the cell model): given m rows of the outputs z, their tangents zt and the points x
// (physical units), all in double precision, it returns acc + the rows' sum of squared residuals and writes
// c times the residual's gradients gz, gzt.
typedef double (*ResidualTileFn)(int64_t m, int64_t inputs, double c, double acc, const double* z, const double* zt,
                                 const double* x, const double* out_center, const double* out_scale, double* gz,
                                 double* gzt);

// A whole residual step in one call: weight * mean(residual^2) over points x (n x inputs, physical units, the
// network's precision) for the shared direction v (the scaled input's derivative along t), its gradient
// written into (add = false) or added to (add = true) gW, gb. Per tile of `tile` rows: the inputs scaled as
// MLPEngine.scale_x does ((x - center) / halfwidth), the forward pass with tangents, the residual's gradient
// by `fn` on the tile's outputs, the backward pass: a tile's arrays stay in the core's cache from the first
// layer to the last and back, and nothing is written to memory beside the gradients. Returns the unweighted
// mean squared residual (a 0-d tensor in the network's precision), summed in double in row order.
template <typename T>
torch::Tensor residual_step_t(const torch::Tensor& x, const torch::Tensor& center, const torch::Tensor& halfwidth,
                              const torch::Tensor& v, const std::vector<torch::Tensor>& W,
                              const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                              const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts, int64_t fn,
                              const torch::Tensor& out_center, const torch::Tensor& out_scale, double weight,
                              bool add, int64_t tile) {
  const char* name_ = "residual_step";
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1, "cpu_step.residual_step: x must be 2-D with >= 1 rows");
  TORCH_CHECK(fn != 0, "cpu_step.residual_step: no residual callback");
  const int n = static_cast<int>(x.size(0)), k = static_cast<int>(x.size(1));
  check_rows<T>(name_, x, n, k, "x");
  const std::vector<Layer<T>> layers = make_layers<T>(name_, k, W, b, &gW, &gb, acts);
  const int nl = static_cast<int>(layers.size()), out = layers[nl - 1].n;
  for (const auto* p : {&center, &halfwidth, &v})
    TORCH_CHECK(p->device().is_cpu() && p->scalar_type() == scalar<T>() && p->is_contiguous() && p->numel() == k,
                "cpu_step.residual_step: center, halfwidth and v must be contiguous ", name<T>(), " CPU vectors of ", k);
  for (const auto* p : {&out_center, &out_scale})
    TORCH_CHECK(p->device().is_cpu() && p->scalar_type() == torch::kFloat64 && p->is_contiguous() && p->numel() == out,
                "cpu_step.residual_step: out_center and out_scale must be contiguous float64 CPU vectors of ", out);
  int maxw = k;
  for (const auto& L : layers) maxw = std::max(maxw, L.n);
  const int TS = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, tile)));

  // scratch: per layer [a; at] and [f'; f'' zt] for a tile (2 TS rows each), the product, two cotangent
  // blocks, the scaled inputs, the thin loops' transpose and row, ztrow, colsum; the callback's rows in double
  const size_t per = round_up((size_t)2 * TS * maxw, lanes<T>());
  thread_local std::vector<T> buf;
  T* arrays = scratch(buf, per * (2 * nl + 3) + round_up((size_t)TS * k, lanes<T>()) + (size_t)maxw * (THIN + 3) + 64);
  ForwardScratch<T> s;
  s.C = arrays + per * 2 * nl;
  T* G0 = s.C + per;
  T* G1 = G0 + per;
  T* XS = G1 + per;
  s.XV = nullptr;  // the direction is shared
  s.wt = XS + round_up((size_t)TS * k, lanes<T>());
  s.row = s.wt + (size_t)maxw * THIN;
  T* ztrow = s.row + maxw;
  T* colsum = ztrow + maxw;
  s.ztrow = ztrow;
  thread_local std::vector<double> dbuf;
  double *zd = scratch(dbuf, (size_t)TS * (4 * out + k)), *ztd = zd + (size_t)TS * out, *gzd = ztd + (size_t)TS * out, *gztd = gzd + (size_t)TS * out;
  double* xd = gztd + (size_t)TS * out;

  const T* X = x.data_ptr<T>();
  const T* cen = center.data_ptr<T>();
  const T* hw = halfwidth.data_ptr<T>();
  const T* V_ = v.data_ptr<T>();
  const auto cb = reinterpret_cast<ResidualTileFn>(fn);
  const double c = 2.0 / ((double)n * out);
  const T w_ = static_cast<T>(weight);
  if (!add) zero_gradients(layers);
  std::fill(colsum, colsum + layers[0].n, T(0.0));
  shared_tangent(layers[0], V_, ztrow);
  double acc = 0.0;
  for (int r0 = 0; r0 < n; r0 += TS) {
    const int m = std::min(TS, n - r0);
    TileArrays<T> t(nl);
    for (int i = 0; i < nl; ++i) {  // values and tangents adjacent: one product each way
      const size_t wm = (size_t)m * layers[i].n;
      t.a[i] = arrays + per * (2 * i);
      t.at[i] = t.a[i] + wm;
      t.d1[i] = arrays + per * (2 * i + 1);
      t.q[i] = t.d1[i] + wm;
    }
    const T* xr = X + (size_t)r0 * k;
    for (int r = 0; r < m; ++r)
      for (int j = 0; j < k; ++j) {
        const size_t o = (size_t)r * k + j;
        XS[o] = (xr[o] - cen[j]) / hw[j];
        xd[o] = static_cast<double>(xr[o]);
      }
    tile_forward(layers, XS, static_cast<const T*>(nullptr), m, t, s);
    const T* zo = t.a[nl - 1];
    const T* zto = t.at[nl - 1];
    for (size_t j = 0; j < (size_t)m * out; ++j) {
      zd[j] = static_cast<double>(zo[j]);
      ztd[j] = static_cast<double>(zto[j]);
    }
    acc = cb(m, k, c, acc, zd, ztd, xd, out_center.data_ptr<double>(), out_scale.data_ptr<double>(), gzd, gztd);
    for (size_t j = 0; j < (size_t)m * out; ++j) {  // as the two-call step: rounded to T, then weighted
      G0[j] = static_cast<T>(gzd[j]) * w_;
      G0[(size_t)m * out + j] = static_cast<T>(gztd[j]) * w_;
    }
    tile_backward(layers, XS, static_cast<const T*>(nullptr), m, t, G0, G1, colsum);
  }
  shared_tangent_gradient(layers[0], V_, colsum);
  return torch::tensor(static_cast<T>(acc / ((double)n * out)), torch::dtype(scalar<T>()));
}

// the entry points: the network's precision (float32 or float64) is x's
torch::Tensor data_step(const torch::Tensor& x, const torch::Tensor& y, const std::vector<torch::Tensor>& W,
                        const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                        const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts, double weight,
                        bool add, int64_t tile) {
  if (x.scalar_type() == torch::kFloat64) return data_step_t<double>(x, y, W, b, gW, gb, acts, weight, add, tile);
  return data_step_t<float>(x, y, W, b, gW, gb, acts, weight, add, tile);
}

void tangent_forward(const torch::Tensor& x, const torch::Tensor& v, const std::vector<torch::Tensor>& W,
                     const std::vector<torch::Tensor>& b, const std::vector<int64_t>& acts,
                     const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ) {
  if (x.scalar_type() == torch::kFloat64) return tangent_forward_t<double>(x, v, W, b, acts, AA, DQ);
  tangent_forward_t<float>(x, v, W, b, acts, AA, DQ);
}

void tangent_backward(const torch::Tensor& x, const torch::Tensor& v, const torch::Tensor& gz,
                      const torch::Tensor& gzt, const std::vector<torch::Tensor>& W,
                      const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                      const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts,
                      const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ, bool add) {
  if (x.scalar_type() == torch::kFloat64) return tangent_backward_t<double>(x, v, gz, gzt, W, b, gW, gb, acts, AA, DQ, add);
  tangent_backward_t<float>(x, v, gz, gzt, W, b, gW, gb, acts, AA, DQ, add);
}

torch::Tensor residual_step(const torch::Tensor& x, const torch::Tensor& center, const torch::Tensor& halfwidth,
                            const torch::Tensor& v, const std::vector<torch::Tensor>& W,
                            const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                            const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts, int64_t fn,
                            const torch::Tensor& out_center, const torch::Tensor& out_scale, double weight, bool add,
                            int64_t tile) {
  if (x.scalar_type() == torch::kFloat64)
    return residual_step_t<double>(x, center, halfwidth, v, W, b, gW, gb, acts, fn, out_center, out_scale, weight, add, tile);
  return residual_step_t<float>(x, center, halfwidth, v, W, b, gW, gb, acts, fn, out_center, out_scale, weight, add, tile);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("data_step", &data_step, "the mean-squared-error data step of an MLP (see training/cpu_step.py)");
  m.def("tangent_forward", &tangent_forward, "an MLP's forward pass with tangents (see training/cpu_step.py)");
  m.def("tangent_backward", &tangent_backward, "the backward pass after tangent_forward");
  m.def("residual_step", &residual_step, "a residual step in one call, the residual by a C callback (see training/cpu_step.py)");
}
