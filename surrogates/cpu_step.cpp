// The mean-squared-error data step of a surrogates.network.MLP on a CPU, in one call: forward, loss and every
// parameter's gradient, without a torch operator inside; and a residual step's forward pass with tangents and
// its backward pass (tangent_forward, tangent_backward; see surrogates/cpu_step.py).
//
// Rows are taken in tiles that stay in the core's cache. Per layer: the product by the BLAS that torch itself
// links (sgemm_), or a plain loop when one side is thin (an input or output layer of a few columns, where a
// BLAS call is mostly overhead); the bias, the activation and its derivative in one pass over the product;
// backward, the derivative's product and the bias gradient in one pass. The loss is summed in double precision.
// Every sum has a fixed order: the same inputs give the same bits on every run of the same build.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace {

// column-major C (m x n) = alpha op(A) op(B) + beta C, as the Fortran BLAS
inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

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

enum Act : int64_t { IDENTITY = 0, SIGMOID, TANH, SILU, RELU, LEAKY_RELU, ELU, GELU, SOFTPLUS };

// one row of a layer: z = c + bias; a = f(z); d = f'(z)
__attribute__((always_inline)) inline void act_row(int64_t code, const float* __restrict c, const float* __restrict bias, float* __restrict a,
                    float* __restrict d, int n) {
  switch (code) {
    case SIGMOID:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float s = 1.0f / (1.0f + fexp(-(c[j] + bias[j])));
        a[j] = s;
        d[j] = s - s * s;
      }
      break;
    case TANH:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float t = 2.0f / (1.0f + fexp(-2.0f * (c[j] + bias[j]))) - 1.0f;
        a[j] = t;
        d[j] = 1.0f - t * t;
      }
      break;
    case SILU:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float s = 1.0f / (1.0f + fexp(-z));
        const float v = z * s;
        a[j] = v;
        d[j] = s * (1.0f + z - v);
      }
      break;
    case RELU:
    case LEAKY_RELU: {
      const float slope = code == RELU ? 0.0f : 0.01f;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        a[j] = z > 0.0f ? z : z * slope;
        d[j] = z > 0.0f ? 1.0f : slope;
      }
      break;
    }
    case ELU:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float e = std::expm1(z);
        a[j] = z > 0.0f ? z : e;
        d[j] = z > 0.0f ? 1.0f : e + 1.0f;
      }
      break;
    case GELU:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float cdf = 0.5f * (1.0f + std::erf(z * 0.70710678118654752f));
        a[j] = z * cdf;
        d[j] = cdf + z * std::exp(-0.5f * z * z) * 0.39894228040143268f;
      }
      break;
    case SOFTPLUS:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        a[j] = z > 20.0f ? z : std::log1p(std::exp(z));
        d[j] = z > 20.0f ? 1.0f : 1.0f / (1.0f + std::exp(-z));
      }
      break;
    default:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        a[j] = c[j] + bias[j];
        d[j] = 1.0f;
      }
  }
}

// one row of a layer with its tangent (forward mode): z = c + bias and zt given; a = f(z), d1 = f'(z),
// at = f'(z) zt and q = f''(z) zt (the backward pass needs d1 and q: gz = g f' + gt f'' zt, gzt = gt f')
__attribute__((always_inline)) inline void act_tangent_row(int64_t code, const float* __restrict c,
                                                           const float* __restrict bias, const float* __restrict zt,
                                                           float* __restrict a, float* __restrict d1,
                                                           float* __restrict at, float* __restrict q, int n) {
  switch (code) {
    case SIGMOID:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float s = 1.0f / (1.0f + fexp(-(c[j] + bias[j])));
        const float f1 = s - s * s;
        a[j] = s;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = f1 * (1.0f - 2.0f * s) * zt[j];
      }
      break;
    case TANH:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float t = 2.0f / (1.0f + fexp(-2.0f * (c[j] + bias[j]))) - 1.0f;
        const float f1 = 1.0f - t * t;
        a[j] = t;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = -2.0f * t * f1 * zt[j];
      }
      break;
    case SILU:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float s = 1.0f / (1.0f + fexp(-z));
        const float v = z * s;
        const float f1 = s * (1.0f + z - v);
        a[j] = v;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = s * (1.0f - s) * (2.0f + z - 2.0f * v) * zt[j];
      }
      break;
    case RELU:
    case LEAKY_RELU: {
      const float slope = code == RELU ? 0.0f : 0.01f;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float f1 = z > 0.0f ? 1.0f : slope;
        a[j] = z > 0.0f ? z : z * slope;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = 0.0f;
      }
      break;
    }
    case ELU:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float e = std::expm1(z);
        const float f1 = z > 0.0f ? 1.0f : e + 1.0f;
        a[j] = z > 0.0f ? z : e;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = z > 0.0f ? 0.0f : (e + 1.0f) * zt[j];
      }
      break;
    case GELU:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float cdf = 0.5f * (1.0f + std::erf(z * 0.70710678118654752f));
        const float phi = std::exp(-0.5f * z * z) * 0.39894228040143268f;
        const float f1 = cdf + z * phi;
        a[j] = z * cdf;
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = phi * (2.0f - z * z) * zt[j];
      }
      break;
    case SOFTPLUS:
      for (int j = 0; j < n; ++j) {
        const float z = c[j] + bias[j];
        const float s = 1.0f / (1.0f + std::exp(-z));
        const float f1 = z > 20.0f ? 1.0f : s;
        a[j] = z > 20.0f ? z : std::log1p(std::exp(z));
        d1[j] = f1;
        at[j] = f1 * zt[j];
        q[j] = z > 20.0f ? 0.0f : s * (1.0f - s) * zt[j];
      }
      break;
    default:
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        a[j] = c[j] + bias[j];
        d1[j] = 1.0f;
        at[j] = zt[j];
        q[j] = 0.0f;
      }
  }
}

struct Layer {
  int k, n;  // inputs, outputs
  const float* W;  // n x k, row-major (torch's Linear.weight)
  const float* b;
  float* gW;
  float* gb;
  int64_t act;
};

// A vector of V floats (GCC/Clang vector extensions: one AVX-512 register, two AVX2 ones elsewhere), loaded
// and stored at any float alignment. The thin loops keep their sums in these, in registers, across rows.
constexpr int V = 16;
typedef float vf __attribute__((vector_size(V * sizeof(float)), aligned(4), may_alias));
inline vf vload(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void vstore(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
inline float hsum(vf v) {
  float s = 0.0f;
  for (int j = 0; j < V; ++j) s += v[j];
  return s;
}

// z[r, :] = prev[r, :] W^T for a layer of K (thin) inputs, row by row in L1 (`row`), each row handed to
// epi(r, row) (the bias and activation)
template <int K, class Epi>
void rows_thin_inputs(const Layer& L, const float* prev, int rows, float* wt, float* row, Epi&& epi) {
  const int n = L.n, nv = n - n % V;
  for (int c = 0; c < K; ++c)
    for (int j = 0; j < n; ++j) wt[c * n + j] = L.W[j * K + c];
  for (int r = 0; r < rows; ++r) {
    const float* ar = prev + (size_t)r * K;
    for (int j = 0; j < nv; j += V) {
      vf z = vload(wt + j) * ar[0];
      for (int c = 1; c < K; ++c) z += vload(wt + c * n + j) * ar[c];
      vstore(row + j, z);
    }
    for (int j = nv; j < n; ++j) {
      float z = wt[j] * ar[0];
      for (int c = 1; c < K; ++c) z += wt[c * n + j] * ar[c];
      row[j] = z;
    }
    epi(r, row);
  }
}

// the same for a layer of N (thin) outputs: one dot product each
template <int N, class Epi>
void rows_thin_outputs(const Layer& L, const float* prev, int rows, float* row, Epi&& epi) {
  const int k = L.k, kv = k - k % V;
  for (int r = 0; r < rows; ++r) {
    const float* ar = prev + (size_t)r * k;
    vf acc[N] = {};
    for (int c = 0; c < kv; c += V) {
      const vf x = vload(ar + c);
      for (int o = 0; o < N; ++o) acc[o] += x * vload(L.W + (size_t)o * k + c);
    }
    for (int o = 0; o < N; ++o) {
      float s = hsum(acc[o]);
      for (int c = kv; c < k; ++c) s += ar[c] * L.W[(size_t)o * k + c];
      row[o] = s;
    }
    epi(r, row);
  }
}

// sums over rows of wide[r, j + jj] * thin[r, c], for a block of V columns j.. of `wide` (acc[c][jj]) or one
// column j (s[c]): the thin layers' weight gradients, summed in registers
template <int T>
inline void outer_sums(const float* wide, int cols, const float* thin, int rows, int j, vf* acc) {
  for (int c = 0; c < T; ++c) acc[c] = vf{};
  for (int r = 0; r < rows; ++r) {
    const vf x = vload(wide + (size_t)r * cols + j);
    for (int c = 0; c < T; ++c) acc[c] += x * thin[(size_t)r * T + c];
  }
}

template <int T>
inline void outer_sums_one(const float* wide, int cols, const float* thin, int rows, int j, float* s) {
  for (int c = 0; c < T; ++c) s[c] = 0.0f;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < T; ++c) s[c] += wide[(size_t)r * cols + j] * thin[(size_t)r * T + c];
}

// gW (n x K) += g^T a for K (thin) inputs
template <int K>
void weight_gradient_thin_inputs(const Layer& L, const float* g, const float* a, int rows) {
  const int n = L.n, nv = n - n % V;
  vf acc[K];
  float s[K];
  for (int j = 0; j < nv; j += V) {
    outer_sums<K>(g, n, a, rows, j, acc);
    for (int c = 0; c < K; ++c)
      for (int jj = 0; jj < V; ++jj) L.gW[(j + jj) * K + c] += acc[c][jj];
  }
  for (int j = nv; j < n; ++j) {
    outer_sums_one<K>(g, n, a, rows, j, s);
    for (int c = 0; c < K; ++c) L.gW[j * K + c] += s[c];
  }
}

// gW (N x k) += g^T a for N (thin) outputs
template <int N>
void weight_gradient_thin_outputs(const Layer& L, const float* g, const float* a, int rows) {
  const int k = L.k, kv = k - k % V;
  vf acc[N];
  float s[N];
  for (int c = 0; c < kv; c += V) {
    outer_sums<N>(a, k, g, rows, c, acc);
    for (int o = 0; o < N; ++o) vstore(L.gW + (size_t)o * k + c, vload(L.gW + (size_t)o * k + c) + acc[o]);
  }
  for (int c = kv; c < k; ++c) {
    outer_sums_one<N>(a, k, g, rows, c, s);
    for (int o = 0; o < N; ++o) L.gW[(size_t)o * k + c] += s[o];
  }
}

// ga (rows x k) *= d, and gb (k) += its column sums (after the input gradient's product)
void scale_and_sum(const float* d, int rows, int k, float* ga, float* gb) {
  const int kv = k - k % V;
  for (int c = 0; c < kv; c += V) {
    vf sum = {};
    for (int r = 0; r < rows; ++r) {
      const vf v = vload(ga + (size_t)r * k + c) * vload(d + (size_t)r * k + c);
      vstore(ga + (size_t)r * k + c, v);
      sum += v;
    }
    vstore(gb + c, vload(gb + c) + sum);
  }
  for (int c = kv; c < k; ++c) {
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const float v = ga[(size_t)r * k + c] * d[(size_t)r * k + c];
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
template <class Epi>
void rows_product(const Layer& L, const float* prev, int rows, float* c, float* wt, float* row, Epi&& epi) {
  if (L.k <= THIN) {
#define PRODUCT_K(K) rows_thin_inputs<K>(L, prev, rows, wt, row, epi)
    THIN_CASES(L.k, PRODUCT_K)
  } else if (L.n <= THIN) {
#define PRODUCT_N(N) rows_thin_outputs<N>(L, prev, rows, row, epi)
    THIN_CASES(L.n, PRODUCT_N)
  } else {
    gemm('T', 'N', L.n, rows, L.k, L.W, L.k, prev, L.k, 0.0f, c, L.n);
    for (int r = 0; r < rows; ++r) epi(r, c + (size_t)r * L.n);
  }
}

// a layer's forward for a tile: a, d (rows x n) = f, f' of (prev W^T + b), the bias and activation in the pass
// that reads the product
void forward_layer(const Layer& L, const float* prev, int rows, float* c, float* wt, float* row, float* a, float* d) {
  const int n = L.n;
  rows_product(L, prev, rows, c, wt, row,
               [&](int r, const float* z) { act_row(L.act, z, L.b, a + (size_t)r * n, d + (size_t)r * n, n); });
}

// gW (n x k) += g^T (n x rows) a (rows x k)
void weight_gradient(const Layer& L, const float* g, const float* a, int rows) {
  if (L.k <= THIN) {
#define WG_K(K) weight_gradient_thin_inputs<K>(L, g, a, rows)
    THIN_CASES(L.k, WG_K)
  } else if (L.n <= THIN) {
#define WG_N(N) weight_gradient_thin_outputs<N>(L, g, a, rows)
    THIN_CASES(L.n, WG_N)
  } else {
    gemm('N', 'T', L.k, L.n, rows, a, L.k, g, L.n, 1.0f, L.gW, L.k);
  }
}

// out (rows x n) = in (rows x k) W^T, without the bias
void linear(const Layer& L, const float* in, int rows, float* out, float* wt, float* row) {
  const int n = L.n;
  rows_product(L, in, rows, out, wt, row, [&](int r, const float* z) {
    float* dst = out + (size_t)r * n;
    if (z != dst) std::memcpy(dst, z, sizeof(float) * n);  // a wide layer's product is already there
  });
}

// out (rows x k) = g (rows x n) W (n x k)
template <int N>
void backprop_thin_outputs(const Layer& L, const float* g, int rows, float* out) {
  const int k = L.k;
  for (int r = 0; r < rows; ++r) {
    float* o_ = out + (size_t)r * k;
    const float* gr = g + (size_t)r * N;
#pragma omp simd
    for (int c = 0; c < k; ++c) {
      float v = gr[0] * L.W[c];
      for (int o = 1; o < N; ++o) v += gr[o] * L.W[(size_t)o * k + c];
      o_[c] = v;
    }
  }
}

void backprop(const Layer& L, const float* g, int rows, float* out) {
  if (L.n <= THIN) {
#define BP_N(N) backprop_thin_outputs<N>(L, g, rows, out)
    THIN_CASES(L.n, BP_N)
  } else {
    gemm('N', 'N', L.k, rows, L.n, L.W, L.k, g, L.n, 0.0f, out, L.k);
  }
}

// ga (rows x k) = (g (rows x n) W (n x k)) * d, the layer below's pre-activation cotangent, and its bias
// gradient gb (k) += the column sums of ga
void input_gradient(const Layer& L, const float* g, int rows, const float* d, float* ga, float* gb) {
  backprop(L, g, rows, ga);
  scale_and_sum(d, rows, L.k, ga, gb);
}

// through a layer's activation, in place: g <- g d1 + gt q, gt <- gt d1 (cotangents of the pre-activation and
// its tangent), and gb (n) += the column sums of the new g
void through_activation(const float* d1, const float* q, int rows, int n, float* g, float* gt, float* gb) {
  const int nv = n - n % V;
  for (int c = 0; c < nv; c += V) {
    vf sum = {};
    for (int r = 0; r < rows; ++r) {
      const size_t j = (size_t)r * n + c;
      const vf d = vload(d1 + j), t = vload(gt + j);
      const vf v = vload(g + j) * d + t * vload(q + j);
      vstore(g + j, v);
      vstore(gt + j, t * d);
      sum += v;
    }
    vstore(gb + c, vload(gb + c) + sum);
  }
  for (int c = nv; c < n; ++c) {
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const size_t j = (size_t)r * n + c;
      const float v = g[j] * d1[j] + gt[j] * q[j];
      g[j] = v;
      gt[j] *= d1[j];
      sum += v;
    }
    gb[c] += sum;
  }
}

// the layers, checked: contiguous float32 CPU tensors, widths that chain from `inputs`; gW, gb may be null
// (a forward pass only)
std::vector<Layer> make_layers(const char* fn, int64_t inputs, const std::vector<torch::Tensor>& W,
                               const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>* gW,
                               const std::vector<torch::Tensor>* gb, const std::vector<int64_t>& acts) {
  const size_t nl = W.size();
  TORCH_CHECK(nl >= 1 && b.size() == nl && acts.size() == nl && (!gW || gW->size() == nl) && (!gb || gb->size() == nl),
              "cpu_step.", fn, ": one weight, bias, gradient pair and activation per layer");
  std::vector<Layer> layers(nl);
  for (size_t i = 0; i < nl; ++i) {
    std::vector<const torch::Tensor*> ts = {&W[i], &b[i]};
    if (gW) ts.push_back(&(*gW)[i]);
    if (gb) ts.push_back(&(*gb)[i]);
    for (const auto* t : ts)
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->is_contiguous(),
                  "cpu_step.", fn, ": parameters and gradients must be contiguous float32 CPU tensors");
    const int k = static_cast<int>(W[i].size(1)), n = static_cast<int>(W[i].size(0));
    const int64_t before = i == 0 ? inputs : layers[i - 1].n;
    TORCH_CHECK(k == before, "cpu_step.", fn, ": layer ", i, " takes ", k, " inputs, the layer before gives ", before);
    TORCH_CHECK(b[i].numel() == n, "cpu_step.", fn, ": layer ", i, " has ", n, " outputs and ", b[i].numel(), " biases");
    layers[i] = {k, n, W[i].data_ptr<float>(), b[i].data_ptr<float>(), gW ? (*gW)[i].data_ptr<float>() : nullptr,
                 gb ? (*gb)[i].data_ptr<float>() : nullptr, acts[i]};
  }
  return layers;
}

void check_rows(const char* fn, const torch::Tensor& t, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), "cpu_step.", fn, ": ",
              what, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) >= rows && t.size(1) == cols, "cpu_step.", fn, ": ", what, " must have at least ",
              rows, " rows of ", cols, " columns, got ", t.sizes());
}

void zero_gradients(const std::vector<Layer>& layers) {
  for (const auto& L : layers) {
    std::fill(L.gW, L.gW + (size_t)L.n * L.k, 0.0f);
    std::fill(L.gb, L.gb + L.n, 0.0f);
  }
}

}  // namespace

// weight * mean((net(x) - y)^2) for scaled rows x (B x inputs), y (B x outputs); its gradient written into
// (add = false) or added to (add = true) gW, gb. Returns the unweighted mean squared error (a 0-d float tensor).
torch::Tensor data_step(const torch::Tensor& x, const torch::Tensor& y, const std::vector<torch::Tensor>& W,
                        const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                        const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts, double weight,
                        bool add, int64_t tile) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0) && x.size(0) >= 1,
              "cpu_step.data_step: x and y must be 2-D with the same number (>= 1) of rows");
  const std::vector<Layer> layers = make_layers("data_step", x.size(1), W, b, &gW, &gb, acts);
  const int nl = static_cast<int>(layers.size());
  int maxw = static_cast<int>(x.size(1));
  for (const auto& L : layers) maxw = std::max(maxw, L.n);
  const int out = layers[nl - 1].n;
  TORCH_CHECK(y.size(1) == out, "cpu_step.data_step: y has ", y.size(1), " columns, the network ", out, " outputs");
  for (const auto* t : {&x, &y})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->is_contiguous(),
                "cpu_step.data_step: x and y must be contiguous float32 CPU tensors");
  const int B = static_cast<int>(x.size(0));
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(B, tile)));

  // scratch: per layer its output a and derivative d for one tile; two cotangent buffers; the product; the
  // small transposes and accumulators of the thin loops
  const size_t per = (size_t)T * maxw;
  thread_local std::vector<float> buf;
  buf.resize(per * (2 * nl + 3) + (size_t)maxw * (THIN + 1) + 64);
  std::vector<float*> A(nl), D(nl);
  for (int i = 0; i < nl; ++i) {
    A[i] = buf.data() + per * (2 * i);
    D[i] = buf.data() + per * (2 * i + 1);
  }
  float* G0 = buf.data() + per * (2 * nl);
  float* G1 = G0 + per;
  float* C = G1 + per;
  float* small = C + per;               // maxw * THIN: a thin layer's transpose
  float* rowbuf = small + (size_t)maxw * THIN;  // maxw: one row's pre-activations

  if (!add) zero_gradients(layers);
  const float* X = x.data_ptr<float>();
  const float* Y = y.data_ptr<float>();
  const float scale = static_cast<float>(2.0 * weight / ((double)B * out));
  double sse = 0.0;
  for (int r0 = 0; r0 < B; r0 += T) {
    const int rows = std::min(T, B - r0);
    const float* xin = X + (size_t)r0 * layers[0].k;
    const float* prev = xin;
    for (int i = 0; i < nl; ++i) {
      const Layer& L = layers[i];
      forward_layer(L, prev, rows, C, small, rowbuf, A[i], D[i]);
      prev = A[i];
    }
    // the loss and the cotangent of the last pre-activation
    const float* yr = Y + (size_t)r0 * out;
    const float* z = A[nl - 1];
    const float* d = D[nl - 1];
    float* g = G0;
    float* gbl = layers[nl - 1].gb;
    for (int r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int o = 0; o < out; ++o) {
        const size_t j = (size_t)r * out + o;
        const float e = z[j] - yr[j];
        s += (double)e * e;
        g[j] = scale * e * d[j];
        gbl[o] += g[j];
      }
      sse += s;
    }
    for (int i = nl - 1; i >= 0; --i) {
      const Layer& L = layers[i];
      const float* a = i == 0 ? xin : A[i - 1];
      weight_gradient(L, g, a, rows);
      if (i > 0) {  // the layer below's cotangent and bias gradient
        float* ga = g == G0 ? G1 : G0;
        input_gradient(L, g, rows, D[i - 1], ga, layers[i - 1].gb);
        g = ga;
      }
    }
  }
  return torch::tensor(static_cast<float>(sse / ((double)B * out)));
}

namespace {

// what both tangent passes check and share: the layers, the direction, the buffers (two blocks of n rows per
// layer: AA = [a; at], DQ = [f'(z); f''(z) zt])
struct TangentArgs {
  std::vector<Layer> layers;
  int rows, inputs, maxw;
  bool shared;
};

TangentArgs tangent_args(const char* fn, const torch::Tensor& x, const torch::Tensor& v,
                         const std::vector<torch::Tensor>& W, const std::vector<torch::Tensor>& b,
                         const std::vector<torch::Tensor>* gW, const std::vector<torch::Tensor>* gb,
                         const std::vector<int64_t>& acts, const std::vector<torch::Tensor>& AA,
                         const std::vector<torch::Tensor>& DQ) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1, "cpu_step.", fn, ": x must be 2-D with >= 1 rows");
  TangentArgs t;
  t.rows = static_cast<int>(x.size(0));
  t.inputs = static_cast<int>(x.size(1));
  check_rows(fn, x, t.rows, t.inputs, "x");
  t.layers = make_layers(fn, t.inputs, W, b, gW, gb, acts);
  t.shared = v.dim() == 1;
  if (t.shared) {
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == torch::kFloat32 && v.is_contiguous() && v.numel() == t.inputs,
                "cpu_step.", fn, ": a shared direction v must be a contiguous float32 CPU vector of ", t.inputs);
  } else {
    check_rows(fn, v, t.rows, t.inputs, "v");
  }
  const size_t nl = t.layers.size();
  TORCH_CHECK(AA.size() == nl && DQ.size() == nl, "cpu_step.", fn, ": two buffers per layer");
  t.maxw = t.inputs;
  for (size_t i = 0; i < nl; ++i) {
    t.maxw = std::max(t.maxw, t.layers[i].n);
    check_rows(fn, AA[i], 2 * (int64_t)t.rows, t.layers[i].n, "a buffer");
    check_rows(fn, DQ[i], 2 * (int64_t)t.rows, t.layers[i].n, "a buffer");
  }
  return t;
}

}  // namespace

// The forward pass with tangents (forward mode), for rows x (n x inputs) and a direction v: one for every
// row (1-D, `inputs` long) or one per row (n x inputs). Per layer, AA gets a = f(z) in its first n rows and
// at = f'(z) zt in the next n, DQ f'(z) and f''(z) zt the same way (buffers of at least 2n rows); the values
// and tangents go through each layer's product together (2n rows, one BLAS call). The network's outputs and
// their derivatives along v are AA[-1][:n] and AA[-1][n:2n]. The backward pass reads the same buffers.
void tangent_forward(const torch::Tensor& x, const torch::Tensor& v, const std::vector<torch::Tensor>& W,
                     const std::vector<torch::Tensor>& b, const std::vector<int64_t>& acts,
                     const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ) {
  const TangentArgs t = tangent_args("tangent_forward", x, v, W, b, nullptr, nullptr, acts, AA, DQ);
  const int n = t.rows, nl = static_cast<int>(t.layers.size());
  const size_t per = (size_t)2 * n * t.maxw;
  thread_local std::vector<float> buf;
  buf.resize(2 * per + (size_t)t.maxw * (THIN + 2) + 64);
  float* C = buf.data();
  float* XV = C + per;  // x and a per-row v, stacked
  float* wt = XV + per;
  float* row = wt + (size_t)t.maxw * THIN;
  float* ztrow = row + t.maxw;
  for (int i = 0; i < nl; ++i) {
    const Layer& L = t.layers[i];
    const int w = L.n;
    float* a = AA[i].data_ptr<float>();
    float* d1 = DQ[i].data_ptr<float>();
    float *at = a + (size_t)n * w, *q = d1 + (size_t)n * w;
    const float* zt = C + (size_t)n * w;  // the tangents' products follow the values'
    size_t zt_stride = w;
    if (i == 0 && t.shared) {  // zt = W v, the same for every row
      linear(L, x.data_ptr<float>(), n, C, wt, row);
      const float* vv = v.data_ptr<float>();
      for (int j = 0; j < w; ++j) {
        float s = 0.0f;
        for (int c = 0; c < L.k; ++c) s += L.W[(size_t)j * L.k + c] * vv[c];
        ztrow[j] = s;
      }
      zt = ztrow;
      zt_stride = 0;
    } else if (i == 0) {
      std::memcpy(XV, x.data_ptr<float>(), sizeof(float) * n * L.k);
      std::memcpy(XV + (size_t)n * L.k, v.data_ptr<float>(), sizeof(float) * n * L.k);
      linear(L, XV, 2 * n, C, wt, row);
    } else {
      linear(L, AA[i - 1].data_ptr<float>(), 2 * n, C, wt, row);
    }
    for (int r = 0; r < n; ++r) {
      const size_t o = (size_t)r * w;
      act_tangent_row(L.act, C + o, L.b, zt + r * zt_stride, a + o, d1 + o, at + o, q + o, w);
    }
  }
}

// The backward pass after tangent_forward (same x, v and buffers): gz, gzt (n x outputs) are the cotangents of
// the outputs and of their derivatives along v; every parameter's gradient is written into (add = false) or
// added to (add = true) gW, gb. The cotangents of values and tangents are kept stacked (2n rows), so each
// layer's weight gradient (g^T a + gt^T at) and input gradient are one BLAS call each.
void tangent_backward(const torch::Tensor& x, const torch::Tensor& v, const torch::Tensor& gz,
                      const torch::Tensor& gzt, const std::vector<torch::Tensor>& W,
                      const std::vector<torch::Tensor>& b, const std::vector<torch::Tensor>& gW,
                      const std::vector<torch::Tensor>& gb, const std::vector<int64_t>& acts,
                      const std::vector<torch::Tensor>& AA, const std::vector<torch::Tensor>& DQ, bool add) {
  const char* fn = "tangent_backward";
  const TangentArgs t = tangent_args(fn, x, v, W, b, &gW, &gb, acts, AA, DQ);
  const int n = t.rows, nl = static_cast<int>(t.layers.size());
  const int out = t.layers[nl - 1].n;
  check_rows(fn, gz, n, out, "gz");
  check_rows(fn, gzt, n, out, "gzt");
  const size_t per = (size_t)2 * n * t.maxw;
  thread_local std::vector<float> buf;
  buf.resize(2 * per + t.maxw + 64);
  float *G = buf.data(), *G2 = G + per, *colsum = G2 + per;
  std::memcpy(G, gz.data_ptr<float>(), sizeof(float) * n * out);
  std::memcpy(G + (size_t)n * out, gzt.data_ptr<float>(), sizeof(float) * n * out);
  if (!add) zero_gradients(t.layers);
  for (int i = nl - 1; i >= 0; --i) {
    const Layer& L = t.layers[i];
    const int w = L.n, k = L.k;
    float* gt = G + (size_t)n * w;
    const float* d1 = DQ[i].data_ptr<float>();
    through_activation(d1, d1 + (size_t)n * w, n, w, G, gt, L.gb);
    if (i > 0) {  // [g; gt]^T [a; at] in one product
      weight_gradient(L, G, AA[i - 1].data_ptr<float>(), 2 * n);
    } else {
      weight_gradient(L, G, x.data_ptr<float>(), n);
      if (t.shared) {  // the layer's input tangent is v on every row: gW += (column sums of gt) v^T
        std::fill(colsum, colsum + w, 0.0f);
        for (int r = 0; r < n; ++r)
#pragma omp simd
          for (int j = 0; j < w; ++j) colsum[j] += gt[(size_t)r * w + j];
        const float* vv = v.data_ptr<float>();
        for (int j = 0; j < w; ++j)
          for (int c = 0; c < k; ++c) L.gW[(size_t)j * k + c] += colsum[j] * vv[c];
      } else {
        weight_gradient(L, gt, v.data_ptr<float>(), n);
      }
    }
    if (i > 0) {
      backprop(L, G, 2 * n, G2);
      std::swap(G, G2);
    }
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("data_step", &data_step, "the mean-squared-error data step of an MLP (see surrogates/cpu_step.py)");
  m.def("tangent_forward", &tangent_forward, "an MLP's forward pass with tangents (see surrogates/cpu_step.py)");
  m.def("tangent_backward", &tangent_backward, "the backward pass after tangent_forward");
}
