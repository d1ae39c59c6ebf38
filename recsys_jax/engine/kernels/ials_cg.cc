// One half-step of iALS by conjugate gradient, for XLA's CPU backend (an XLA FFI custom
// call; recsys_jax/engine/kernels/__init__.py builds and registers it).
//
// With the other side's rows q_i fixed, each row x of this side (its positives S, in CSR
// form: indices[indptr[u] .. indptr[u+1]]) minimises the quadratic of its normal equations
//   A x = b,   A = G + sum_{i in S} q_i q_i^T + lambda_u I,   b = sum_{i in S} q_i,
// with G the caller's alpha_0 Q^T Q (k x k, symmetric) and lambda_u the caller's per-row
// weight (recsys_jax.models.ials writes the maths). From the row's current value the kernel
// takes `steps` conjugate-gradient steps, never forming A:
//   r = b - A x,  p = r,  rs = r.r;  per step:
//   Ap = G p + lambda_u p + sum_i (q_i.p) q_i,  alpha = rs / max(p.Ap, 1e-30),
//   x += alpha p,  r -= alpha Ap,  rs' = r.r,  p = r + (rs' / max(rs, 1e-30)) p,  rs = rs'.
// These are the XLA path's formulas (recsys_jax.models.ials._cg_chunk), so both compute the
// same rows to float rounding. A row without positives becomes 0 (its exact minimiser).
// With the attribute with_loss = 1 the second output holds each row's observed loss at its
// new value, sum_{i in S} (x.q_i - 1)^2 (one more pass over its positives, still cached;
// else zeros).
// A step costs one pass over the row's positives (|S| k multiply-adds twice) and one
// k x k product with G; the positives' rows stay in the core's cache between the passes.
//
// Rows are independent: blocks of rows are claimed from an atomic counter by the calling
// thread and tasks on XLA's intra-op pool. Every row is computed by one thread in a fixed
// order, so the result does not depend on which thread ran it. The row width has a
// compiled case for 64 and 32 factors beside any width.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "spin.h"
#include "xla/ffi/api/ffi.h"

namespace {
namespace ffi = xla::ffi;
using Table = ffi::Buffer<ffi::F32, 2>;
using Ints = ffi::Buffer<ffi::S32, 1>;
using Vector = ffi::Buffer<ffi::F32, 1>;

constexpr int64_t kBlock = 32;  // rows per claim
constexpr int64_t kAhead = 4;   // positives to prefetch ahead in the first pass

using recsys_kernels::relax;  // spin.h

struct Half {
  const float* own;
  const float* other;
  const float* gram;
  const int32_t* indptr;
  const int32_t* indices;
  const float* reg;
  float* out;
  float* loss;
  int64_t rows, k;
  int32_t steps, with_loss;
};

inline float dot(const float* a, const float* b, int64_t k) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < k; ++j) s += a[j] * b[j];
  return s;
}

inline void axpy(float a, const float* x, float* y, int64_t k) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] += a * x[j];
}

// y = G v + lambda v (G symmetric: row l of G times v[l], summed).
inline void gram_times(const float* g, const float* v, float lambda, float* y, int64_t k) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] = lambda * v[j];
  for (int64_t l = 0; l < k; ++l) axpy(v[l], g + l * k, y, k);
}

// Width K: 0 means any (h.k); else the compiled width.
template <int K>
void solve_rows(const Half& h, int64_t first, int64_t last, float* buf) {
  const int64_t k = K > 0 ? K : h.k;
  float* x = buf;
  float* r = buf + k;
  float* p = buf + 2 * k;
  float* ap = buf + 3 * k;
  for (int64_t u = first; u < last; ++u) {
    const int32_t* idx = h.indices + h.indptr[u];
    const int64_t n = h.indptr[u + 1] - h.indptr[u];
    float* dest = h.out + u * k;
    h.loss[u] = 0.0f;
    if (n == 0) {
      std::memset(dest, 0, sizeof(float) * k);
      continue;
    }
    const float lambda = h.reg[u];
    std::memcpy(x, h.own + u * k, sizeof(float) * k);
    gram_times(h.gram, x, lambda, ap, k);  // r = b - A x
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) r[j] = -ap[j];
    for (int64_t s = 0; s < n; ++s) {
      if (s + kAhead < n) {
        const float* ahead = h.other + int64_t(idx[s + kAhead]) * k;
        for (int64_t j = 0; j < k; j += 16) __builtin_prefetch(ahead + j);
      }
      const float* q = h.other + int64_t(idx[s]) * k;
      axpy(1.0f - dot(q, x, k), q, r, k);
    }
    std::memcpy(p, r, sizeof(float) * k);
    float rs = dot(r, r, k);
    for (int32_t step = 0; step < h.steps; ++step) {
      gram_times(h.gram, p, lambda, ap, k);
      for (int64_t s = 0; s < n; ++s) {
        const float* q = h.other + int64_t(idx[s]) * k;
        axpy(dot(q, p, k), q, ap, k);
      }
      const float alpha = rs / std::max(dot(p, ap, k), 1e-30f);
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        x[j] += alpha * p[j];
        r[j] -= alpha * ap[j];
      }
      const float next = dot(r, r, k);
      const float beta = next / std::max(rs, 1e-30f);
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) p[j] = r[j] + beta * p[j];
      rs = next;
    }
    std::memcpy(dest, x, sizeof(float) * k);
    if (h.with_loss) {
      float loss = 0.0f;
      for (int64_t s = 0; s < n; ++s) {
        const float e = dot(h.other + int64_t(idx[s]) * k, x, k) - 1.0f;
        loss += e * e;
      }
      h.loss[u] = loss;
    }
  }
}

// Blocks of rows claimed by the calling thread and pool tasks. The caller waits only for
// blocks that were claimed, so a task that never runs costs time, not a deadlock, and one
// that runs late finds nothing to claim (it holds the state by a shared pointer).
struct Work {
  Half half;
  int64_t blocks = 0;
  std::atomic<int64_t> claimed{0}, done{0};

  void run() {
    std::vector<float> buf(4 * half.k);
    for (int64_t b; (b = claimed.fetch_add(1)) < blocks;) {
      const int64_t first = b * kBlock, last = std::min(half.rows, first + kBlock);
      if (half.k == 64) {
        solve_rows<64>(half, first, last, buf.data());
      } else if (half.k == 32) {
        solve_rows<32>(half, first, last, buf.data());
      } else {
        solve_rows<0>(half, first, last, buf.data());
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
  void wait() {
    for (int spins = 0; done.load(std::memory_order_acquire) < blocks;) relax(spins);
  }
};

ffi::Error IalsCg(ffi::ThreadPool pool, Table own, Table other, Table gram, Ints indptr, Ints indices, Vector reg,
                  ffi::Result<Table> out, ffi::Result<Vector> loss, int32_t steps, int32_t with_loss) {
  const int64_t rows = own.dimensions()[0], k = own.dimensions()[1], num_other = other.dimensions()[0];
  if (other.dimensions()[1] != k || gram.dimensions()[0] != k || gram.dimensions()[1] != k)
    return ffi::Error::InvalidArgument("ials cg: own, other and gram of different widths");
  if (indptr.element_count() != rows + 1 || reg.element_count() != rows || loss->element_count() != rows)
    return ffi::Error::InvalidArgument("ials cg: indptr must hold rows + 1 values, reg and loss rows");
  if (steps < 0) return ffi::Error::InvalidArgument("ials cg: steps must be >= 0");
  const int32_t* ptr = indptr.typed_data();
  const int64_t nnz = indices.element_count();
  bool bad = ptr[0] != 0 || ptr[rows] != nnz;
  for (int64_t u = 0; u < rows; ++u) bad |= ptr[u + 1] < ptr[u];
  if (bad) return ffi::Error::InvalidArgument("ials cg: indptr is not a row pointer over the indices");
  const int32_t* idx = indices.typed_data();
  const uint32_t limit = static_cast<uint32_t>(num_other);
  for (int64_t s = 0; s < nnz; ++s) bad |= static_cast<uint32_t>(idx[s]) >= limit;
  if (bad) return ffi::Error::InvalidArgument("ials cg: an index is out of range");

  auto work = std::make_shared<Work>();
  work->half = Half{own.typed_data(), other.typed_data(), gram.typed_data(), ptr, idx, reg.typed_data(),
                    out->typed_data(), loss->typed_data(), rows, k, steps, with_loss};
  work->blocks = (rows + kBlock - 1) / kBlock;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), std::max(1u, std::thread::hardware_concurrency()) - 1);
  for (int64_t t = 0; t < helpers && t + 1 < work->blocks; ++t) pool.Schedule([work] { work->run(); });
  work->run();
  work->wait();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysIalsCg, IalsCg,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Table>()  // own rows, float32[N, K] (the start)
                                  .Arg<Table>()  // other side's rows, float32[M, K]
                                  .Arg<Table>()  // alpha_0 Q^T Q, float32[K, K]
                                  .Arg<Ints>()   // indptr, int32[N + 1]
                                  .Arg<Ints>()   // indices (the other side's rows), int32[nnz]
                                  .Arg<Vector>()  // lambda_u per row, float32[N]
                                  .Ret<Table>()  // the new rows, float32[N, K]
                                  .Ret<Vector>()  // each row's observed loss (with_loss), float32[N]
                                  .Attr<int32_t>("steps")
                                  .Attr<int32_t>("with_loss"));
