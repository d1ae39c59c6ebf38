// One SGD, AdaGrad or lazy Adam step of a biased matrix factorisation on the rows a batch
// touches, for XLA's CPU
// backend (an XLA FFI custom call; recsys_jax/kernels/__init__.py builds and registers it).
//
// Model and objective, as recsys_jax.models.bias / dot and recsys_jax.train.make_objective
// write them (squared error, L2 on the touched rows, padding weight 0):
//   x_b = mu + b_u + b_i + p_u . q_i         (has_bias = 0, the dot model: x_b = p_u . q_i)
//   e_b = x_b - r_b,   W = max(sum_b w_b, 1)
//   L   = (1/W) sum_b w_b [e_b^2 + l2 (|p_u|^2 + |q_i|^2) + bias_l2 (b_u^2 + b_i^2)]
// Table layout (recsys_jax.sparse.pack): row r of a side's table is [b_r, f_r], the bias in
// column 0, when has_bias, else [f_r] (P parameter columns), then the rule's state; both
// tables have the same width.
//
// The rule (attribute "rule") is applied to the batch's gradient at the old parameters, as
// the XLA step's. SGD (rule 0):
//   theta_r <- theta_r - lr dL/dtheta_r,
//   dL/dp_u = sum_{b: u_b = u} c_b q_{i_b} + (2 l2 / W) n_u p_u,
//   c_b = 2 w_b e_b / W,   n_u = sum_{b: u_b = u} w_b
// (items alike; bias columns: c_b and bias_l2).
//
// Row-wise AdaGrad (rule 1, recsys_jax.sparse.rowwise_adagrad) keeps one accumulator a_r
// per row in the table's last column, after the parameters. With g_{b,r} example b's
// gradient row (c_b q_i + (2 l2 w_b / W) p_u for a user row; the bias column
// c_b + (2 bias_l2 w_b / W) b_u),
//   a_r <- a_r + sum_{b uses r} |g_{b,r}|^2 / P,
//   theta_r <- theta_r - lr / (sqrt(a_r) + eps) * dL/dtheta_r
// with dL/dtheta_r as above: the SGD step with a per-row learning rate, from the
// accumulator after the whole batch.
//
// Lazy Adam (rule 2, recsys_jax.sparse.lazy_adam): the row is [theta_r, m_r, v_r], P columns
// each, and a row that the batch touches (with weight > 0) takes Adam's step on its merged
// gradient G = dL/dtheta_r, with the bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t of the
// global step t given by the caller:
//   m <- b1 m + (1 - b1) G,  v <- b2 v + (1 - b2) G^2,  theta <- theta - lr (m / c1) / (sqrt(v / c2) + eps).
//
// The order of the examples within a batch does not change the sums above (nor G), so
// the kernel first sorts the batch by the row of the side with
// more rows, "large" (a stable counting sort), and walks the large table in ascending order,
// one group of examples per row. The other side, "small", gathers its gradient in scratch.
// After the sort, two phases, each split between the calling thread and a task on XLA's
// intra-op pool (scheduled first, so that it wakes while the batch is sorted):
//   A. the sorted batch in two halves, cut between groups (at equal examples plus groups),
//      each with scratch of its own.
//      For each group (large row x): every example's e_b and c_b, acc_h[s_b] += c_b x and
//      n_h[s_b] += w_b (x and the small rows still old); then x's penalty term
//      n_x l2 |x|^2 joins the loss and x <- x (1 - 2 lr l2 n_x / W) - lr sum_b c_b s_b
//      (SGD; the other rules' steps from the same sums).
//      No other group reads x, and no small row changes in this phase. (AdaGrad: the
//      examples' squared gradient norms also add up, for x and in scratch sq_h for the
//      small rows, and x's accumulator and learning rate are updated before x.)
//   B. the small side's touched rows, in two ranges of rows: each row once, its penalty
//      term, then s <- s (1 - 2 lr l2 n_s / W) - lr (acc_0[s] + acc_1[s]), and its scratch
//      zeroed.
// The sort is a counting sort (radix, two passes, above 65536 rows) that also finds the
// groups. Which half or range an array belongs to is fixed and partial sums are added in a
// fixed order, so the result does not depend on which thread ran what. Rows (and the small
// side's scratch rows) are prefetched a few examples ahead, and phase A is compiled for the
// common row widths (50 or 64 factors, with or without a bias column) besides any width.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "spin.h"
#include "xla/ffi/api/ffi.h"

namespace {
namespace ffi = xla::ffi;
using Table = ffi::Buffer<ffi::F32, 2>;
using Indices = ffi::Buffer<ffi::S32, 1>;
using Vector = ffi::Buffer<ffi::F32, 1>;

using recsys_kernels::relax;  // spin.h

// Phases of numbered items, run by the calling thread and one pool task. Items are claimed
// from an atomic counter and a phase starts once every item of the one before is done. The
// caller waits only for items that were claimed, so a task that never runs (a busy pool)
// costs time, not a deadlock, and one that runs late finds nothing left to claim.
struct Phases {
  static constexpr int kPhases = 3;
  std::atomic<int> claimed[kPhases] = {}, done[kPhases] = {};
  int items[kPhases] = {};
  std::function<void(int, int)> fn;  // (phase, item)

  void wait(int phase) {
    for (int spins = 0; done[phase].load(std::memory_order_acquire) < items[phase];) relax(spins);
  }
  void run() {
    for (int phase = 0; phase < kPhases; ++phase) {
      if (phase > 0) wait(phase - 1);
      for (int k; (k = claimed[phase].fetch_add(1)) < items[phase];) {
        fn(phase, k);
        done[phase].fetch_add(1, std::memory_order_release);
      }
    }
  }
};

constexpr int kHalves = 2;
constexpr int64_t kAhead = 8;  // examples to prefetch ahead

inline void prefetch_row(const float* x, int64_t width) {
  for (int64_t j = 0; j < width; j += 16) __builtin_prefetch(x + j);
  __builtin_prefetch(x + width - 1);
}

inline void prefetch_row_for_write(float* x, int64_t width) {
  for (int64_t j = 0; j < width; j += 16) __builtin_prefetch(x + j, 1);
  __builtin_prefetch(x + width - 1, 1);
}

struct Scratch {
  std::vector<float> acc[kHalves], n[kHalves], sq[kHalves], group[kHalves];  // the small side's; a group's sum
  std::vector<int32_t> order, spare, counts, starts;
  void fit(int64_t small_rows, int64_t width, int64_t batch) {
    for (int h = 0; h < kHalves; ++h) {
      if ((int64_t)acc[h].size() != small_rows * width) acc[h].assign(small_rows * width, 0.0f);
      if ((int64_t)n[h].size() != small_rows) n[h].assign(small_rows, 0.0f);
      if ((int64_t)sq[h].size() != small_rows) sq[h].assign(small_rows, 0.0f);
      group[h].resize(width);
    }
    order.resize(batch);
    spare.resize(batch);
    starts.resize(batch + 1);
  }
};

std::mutex scratch_lock;
std::vector<std::unique_ptr<Scratch>> scratch_free;

std::unique_ptr<Scratch> take_scratch() {
  std::lock_guard<std::mutex> hold(scratch_lock);
  if (scratch_free.empty()) return std::make_unique<Scratch>();
  auto s = std::move(scratch_free.back());
  scratch_free.pop_back();
  return s;
}

void give_scratch(std::unique_ptr<Scratch> s) {
  std::lock_guard<std::mutex> hold(scratch_lock);
  scratch_free.push_back(std::move(s));
}

// The batch stably sorted by key (keys in [0, rows)): order[k] is the k-th example, and the
// examples of group g (one key) are order[starts[g] .. starts[g + 1]). Returns the number of
// groups. A counting sort by the whole key up to kCountingRows rows (one pass), else by its
// low and high halves (LSD radix, two passes).
constexpr int64_t kCountingRows = int64_t{1} << 16;

int64_t sort_by_key(const int32_t* key, int64_t batch, int64_t rows, Scratch& s) {
  int32_t* out = s.order.data();
  if (rows <= kCountingRows) {
    s.counts.assign(rows + 1, 0);
    for (int64_t b = 0; b < batch; ++b) ++s.counts[key[b] + 1];
    for (int64_t r = 0; r < rows; ++r) s.counts[r + 1] += s.counts[r];
    for (int64_t b = 0; b < batch; ++b) out[s.counts[key[b]]++] = static_cast<int32_t>(b);
  } else {
    const int shift = (64 - __builtin_clzll(static_cast<uint64_t>(rows - 1)) + 1) / 2;
    const int64_t buckets = int64_t{1} << shift;
    int32_t* tmp = s.spare.data();
    s.counts.assign(buckets + 1, 0);
    for (int64_t b = 0; b < batch; ++b) ++s.counts[(key[b] & (buckets - 1)) + 1];
    for (int64_t r = 0; r < buckets; ++r) s.counts[r + 1] += s.counts[r];
    for (int64_t b = 0; b < batch; ++b) tmp[s.counts[key[b] & (buckets - 1)]++] = static_cast<int32_t>(b);
    s.counts.assign(buckets + 1, 0);
    for (int64_t b = 0; b < batch; ++b) ++s.counts[(key[b] >> shift) + 1];
    for (int64_t r = 0; r < buckets; ++r) s.counts[r + 1] += s.counts[r];
    for (int64_t k = 0; k < batch; ++k) out[s.counts[key[tmp[k]] >> shift]++] = tmp[k];
  }
  int32_t* starts = s.starts.data();
  int64_t groups = batch > 0 ? 1 : 0;
  starts[0] = 0;
  for (int64_t k = 1; k < batch; ++k) {  // without a branch: a new group where the key changes
    starts[groups] = static_cast<int32_t>(k);
    groups += key[out[k]] != key[out[k - 1]];
  }
  starts[groups] = static_cast<int32_t>(batch);
  return groups;
}

enum Rule { kSgd = 0, kAdaGrad = 1, kLazyAdam = 2 };  // the row update (attribute "rule")

// One call's step (see the top of the file). Phase A is a template on the row width, 0 for
// a width known only at run time.
struct Step {
  float* table[2];
  const int32_t* index[2];
  const float *r, *w;
  int64_t rows[2], width, stride, batch, first;  // width: parameter columns; stride: a table row
  int large, small;
  bool has_bias;
  int rule;
  float mu, lr, l2, bias_l2, inv_w, eps, inv_p, b1, b2, rest1, rest2, bc1, bc2;  // rest: 1 - b, rounded once
  Scratch* scratch;
  int64_t groups = 0, cut[kHalves + 1] = {};
  double error_part[kHalves] = {}, grad_mu_part[kHalves] = {}, penalty_part[kHalves + 2] = {};

  void sort() {
    groups = sort_by_key(index[large], batch, rows[large], *scratch);
    // Cut the groups into halves of about equal cost, counting a group as one example more.
    const int32_t* starts = scratch->starts.data();
    const int64_t total = batch + groups;
    int64_t g = 0;
    for (int h = 1; h < kHalves; ++h) {
      while (g < groups && starts[g] + g < total * h / kHalves) ++g;
      cut[h] = g;
    }
    cut[kHalves] = groups;
  }

  // Row x's update: g its examples' summed data gradient (without the penalty), n their
  // weight, sq (AdaGrad) the mean square of their gradient rows. The row's penalty term
  // joins penalty, then the rule's step on dL/dx = g + (2 l2 n / W) x (bias: bias_l2).
  template <int64_t W, int RULE>
  void update_row(float* x, const float* g, float n, float sq, double& penalty) const {
    const int64_t width = W ? W : this->width;
    float norm = 0.0f;
#pragma omp simd reduction(+ : norm)
    for (int64_t j = first; j < width; ++j) norm += x[j] * x[j];
    penalty += static_cast<double>(n) * (l2 * norm + (has_bias ? bias_l2 * x[0] * x[0] : 0.0f));
    const float k_f = 2.0f * l2 * inv_w * n, k_b = 2.0f * bias_l2 * inv_w * n;
    if (RULE == kLazyAdam) {  // m and v follow the parameters in the row
      float* m = x + width;
      float* v = x + 2 * width;
      if (has_bias) {
        const float grad = g[0] + k_b * x[0];
        m[0] = b1 * m[0] + rest1 * grad;
        v[0] = b2 * v[0] + rest2 * grad * grad;
        x[0] -= lr * ((m[0] / bc1) / (std::sqrt(v[0] / bc2) + eps));
      }
#pragma omp simd
      for (int64_t j = first; j < width; ++j) {
        const float grad = g[j] + k_f * x[j];
        m[j] = b1 * m[j] + rest1 * grad;
        v[j] = b2 * v[j] + rest2 * grad * grad;
        x[j] -= lr * ((m[j] / bc1) / (std::sqrt(v[j] / bc2) + eps));
      }
      return;
    }
    float rate = lr;
    if (RULE == kAdaGrad) {  // the accumulator follows the parameters
      x[width] += sq;
      rate = lr / (std::sqrt(x[width]) + eps);
    }
    if (has_bias) x[0] = x[0] * (1.0f - rate * k_b) - rate * g[0];
    const float keep = 1.0f - rate * k_f;
#pragma omp simd
    for (int64_t j = first; j < width; ++j) x[j] = x[j] * keep - rate * g[j];
  }

  template <int64_t W, int RULE>
  void half(int h) {
    const int64_t width = W ? W : this->width;
    const int64_t stride = width * (RULE == kLazyAdam ? 3 : 1) + (RULE == kAdaGrad ? 1 : 0);
    double error = 0.0, grad_mu = 0.0, penalty = 0.0;
    float* acc = scratch->acc[h].data();
    float* n = scratch->n[h].data();
    float* sq = scratch->sq[h].data();
    const float k_l2 = 2.0f * l2 * inv_w, k_bias = 2.0f * bias_l2 * inv_w;  // times w_b: the penalty's gradient
    float* g = scratch->group[h].data();
    const int32_t* order = scratch->order.data();
    const int32_t* starts = scratch->starts.data();
    const int32_t* big = index[large];
    const int32_t* little = index[small];
    const float* ys = table[small];
    const int64_t end = starts[cut[h + 1]];
    for (int64_t group = cut[h]; group < cut[h + 1]; ++group) {
      float* x = table[large] + big[order[starts[group]]] * stride;
      std::fill(g, g + width, 0.0f);
      float count = 0.0f, x_sq = 0.0f;
      for (int64_t k = starts[group]; k < starts[group + 1]; ++k) {
        if (k + kAhead < end) {
          const int64_t ahead = order[k + kAhead];
          prefetch_row(ys + little[ahead] * stride, width);
          prefetch_row(table[large] + big[ahead] * stride, stride);
          prefetch_row_for_write(acc + little[ahead] * width, width);
        }
        const int64_t b = order[k];
        // Padding (weight 0) adds nothing; skipped, so that a non-finite row it reads (a diverged
        // run's) cannot leave 0 * inf = NaN in the small side's scratch, which phase B clears only
        // for rows with weight and which the next call, on other tables, would read.
        if (w[b] == 0.0f) continue;
        const int64_t s = little[b];
        const float* y = ys + s * stride;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = first; j < width; ++j) dot += x[j] * y[j];
        const float e = dot - r[b] + (has_bias ? mu + x[0] + y[0] : 0.0f);
        error += static_cast<double>(w[b]) * e * e;
        const float cb = 2.0f * w[b] * e * inv_w;
        grad_mu += cb;
        count += w[b];
        n[s] += w[b];
        float* a = acc + s * width;
        if (has_bias) {
          a[0] += cb;
          g[0] += cb;
        }
        if (RULE == kAdaGrad) {  // this example's squared gradient rows, x's (gx) and y's (gy)
          const float kb = k_l2 * w[b];
          float gx = 0.0f, gy = 0.0f;
          if (has_bias) {
            const float tx = cb + k_bias * w[b] * x[0], ty = cb + k_bias * w[b] * y[0];
            gx = tx * tx;
            gy = ty * ty;
          }
#pragma omp simd reduction(+ : gx, gy)
          for (int64_t j = first; j < width; ++j) {
            a[j] += cb * x[j];
            g[j] += cb * y[j];
            const float tx = cb * y[j] + kb * x[j], ty = cb * x[j] + kb * y[j];
            gx += tx * tx;
            gy += ty * ty;
          }
          x_sq += gx * inv_p;
          sq[s] += gy * inv_p;
        } else {
#pragma omp simd
          for (int64_t j = first; j < width; ++j) {
            a[j] += cb * x[j];
            g[j] += cb * y[j];
          }
        }
      }
      if (count != 0.0f) update_row<W, RULE>(x, g, count, x_sq, penalty);  // else: padding only, no gradient
    }
    error_part[h] = error;
    grad_mu_part[h] = grad_mu;
    penalty_part[h] = penalty;
  }

  template <int RULE>
  void half_for_width(int h) {
    switch (width) {
      case 50: return half<50, RULE>(h);
      case 51: return half<51, RULE>(h);
      case 64: return half<64, RULE>(h);
      case 65: return half<65, RULE>(h);
      default: return half<0, RULE>(h);
    }
  }

  void phase_a(int h) {
    switch (rule) {
      case kAdaGrad: return half_for_width<kAdaGrad>(h);
      case kLazyAdam: return half_for_width<kLazyAdam>(h);
      default: return half_for_width<kSgd>(h);
    }
  }

  // Phase B's two parts: rows [0, R/2) and [R/2, R) of the small side, every row looked at
  // when there are few (R <= 4 batch), else the batch's rows of each part.
  template <int RULE>
  void small_rows(int part) {
    double penalty = 0.0;
    float* acc[kHalves] = {scratch->acc[0].data(), scratch->acc[1].data()};
    float* n[kHalves] = {scratch->n[0].data(), scratch->n[1].data()};
    float* sq[kHalves] = {scratch->sq[0].data(), scratch->sq[1].data()};
    const int32_t* little = index[small];
    const bool by_rows = rows[small] <= 4 * batch;
    const int64_t lo = rows[small] * part / 2, hi = rows[small] * (part + 1) / 2;
    for (int64_t k = by_rows ? lo : 0; k < (by_rows ? hi : batch); ++k) {
      const int64_t row = by_rows ? k : little[k];
      if (row < lo || row >= hi) continue;
      const float count = n[0][row] + n[1][row];
      if (count == 0.0f) continue;  // done already, or touched by padding only (no gradient)
      n[0][row] = n[1][row] = 0.0f;
      float* a0 = acc[0] + row * width;
      float* a1 = acc[1] + row * width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        a0[j] += a1[j];
        a1[j] = 0.0f;
      }
      update_row<0, RULE>(table[small] + row * stride, a0, count, sq[0][row] + sq[1][row], penalty);
      sq[0][row] = sq[1][row] = 0.0f;
      std::fill(a0, a0 + width, 0.0f);
    }
    penalty_part[kHalves + part] = penalty;
  }

  void phase_b(int part) {
    switch (rule) {
      case kAdaGrad: return small_rows<kAdaGrad>(part);
      case kLazyAdam: return small_rows<kLazyAdam>(part);
      default: return small_rows<kSgd>(part);
    }
  }
};

ffi::Error MfSgdStep(ffi::ThreadPool pool, Table user_table, Table item_table, Indices users, Indices items,
                     Vector ratings, Vector weights, Vector scalars, ffi::Result<Table> user_out,
                     ffi::Result<Table> item_out, ffi::Result<Vector> stats, float l2, float bias_l2,
                     int32_t has_bias, int32_t rule, float eps, float b1, float b2, float rest1, float rest2) {
  Step step;
  if (rule < kSgd || rule > kLazyAdam) return ffi::Error::InvalidArgument("unknown rule");
  step.rule = rule;
  step.stride = user_table.dimensions()[1];
  step.width = rule == kLazyAdam ? step.stride / 3 : step.stride - (rule == kAdaGrad ? 1 : 0);
  if (rule == kLazyAdam && step.stride % 3 != 0) return ffi::Error::InvalidArgument("lazy Adam rows are 3 x P wide");
  if (step.width < (has_bias ? 1 : 0) + 1) return ffi::Error::InvalidArgument("tables too narrow");
  step.batch = users.dimensions()[0];
  step.rows[0] = user_table.dimensions()[0];
  step.rows[1] = item_table.dimensions()[0];
  const int64_t batch = step.batch;
  if (item_table.dimensions()[1] != step.stride) return ffi::Error::InvalidArgument("tables of different widths");
  if (items.dimensions()[0] != batch || ratings.dimensions()[0] != batch || weights.dimensions()[0] != batch)
    return ffi::Error::InvalidArgument("users, items, ratings and weights of different lengths");
  if (scalars.element_count() != 4 || stats->element_count() != 2)
    return ffi::Error::InvalidArgument("scalars hold four values and stats two");
  step.table[0] = user_out->typed_data();
  step.table[1] = item_out->typed_data();
  if (step.table[0] != user_table.typed_data())
    std::memcpy(step.table[0], user_table.typed_data(), user_table.size_bytes());
  if (step.table[1] != item_table.typed_data())
    std::memcpy(step.table[1], item_table.typed_data(), item_table.size_bytes());
  step.index[0] = users.typed_data();
  step.index[1] = items.typed_data();
  for (int side = 0; side < 2; ++side) {
    bool bad = false;
    const uint32_t limit = static_cast<uint32_t>(step.rows[side]);
    for (int64_t b = 0; b < batch; ++b) bad |= static_cast<uint32_t>(step.index[side][b]) >= limit;
    if (bad) return ffi::Error::InvalidArgument("a user or item index is out of range");
  }
  step.r = ratings.typed_data();
  step.w = weights.typed_data();
  step.mu = scalars.typed_data()[0];
  step.lr = scalars.typed_data()[1];
  step.bc1 = scalars.typed_data()[2];  // lazy Adam's bias corrections, 1 - b^t
  step.bc2 = scalars.typed_data()[3];
  step.b1 = b1;
  step.b2 = b2;
  step.rest1 = rest1;  // 1 - b1 as the caller rounds it (XLA's step: the float nearest 1 - 0.999,
  step.rest2 = rest2;  // not 1 - the float nearest 0.999)
  step.l2 = l2;
  step.bias_l2 = bias_l2;
  step.has_bias = has_bias != 0;
  step.first = has_bias ? 1 : 0;  // the first factor column
  step.large = step.rows[1] >= step.rows[0] ? 1 : 0;
  step.small = 1 - step.large;
  double weight_sum = 0.0;
  for (int64_t b = 0; b < batch; ++b) weight_sum += step.w[b];
  step.inv_w = 1.0f / static_cast<float>(std::max(weight_sum, 1.0));
  step.eps = eps;
  step.inv_p = 1.0f / static_cast<float>(step.width);

  auto scratch = take_scratch();
  scratch->fit(step.rows[step.small], step.width, batch);
  step.scratch = scratch.get();
  auto phases = std::make_shared<Phases>();
  phases->items[0] = 1;
  phases->items[1] = kHalves;
  phases->items[2] = 2;
  phases->fn = [&step](int phase, int k) {
    if (phase == 0) {
      step.sort();
    } else if (phase == 1) {
      step.phase_a(k);
    } else {
      step.phase_b(k);
    }
  };
  if (pool.num_threads() > 0) pool.Schedule([phases] { phases->run(); });
  phases->run();
  phases->wait(Phases::kPhases - 1);
  give_scratch(std::move(scratch));

  double loss = 0.0, grad_mu = 0.0;
  for (double part : step.penalty_part) loss += part;
  for (int h = 0; h < kHalves; ++h) {
    loss += step.error_part[h];
    grad_mu += step.grad_mu_part[h];
  }
  stats->typed_data()[0] = static_cast<float>(loss * step.inv_w);
  stats->typed_data()[1] = static_cast<float>(grad_mu);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysMfSgdStep, MfSgdStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Table>()  // user table
                                  .Arg<Table>()  // item table
                                  .Arg<Indices>()  // users
                                  .Arg<Indices>()  // items
                                  .Arg<Vector>()  // ratings
                                  .Arg<Vector>()  // weights (0: padding)
                                  .Arg<Vector>()  // [mu, lr, 1 - b1^t, 1 - b2^t]
                                  .Ret<Table>()  // user table (aliases the input)
                                  .Ret<Table>()  // item table (aliases the input)
                                  .Ret<Vector>()  // [loss, dL/dmu]
                                  .Attr<float>("l2")
                                  .Attr<float>("bias_l2")
                                  .Attr<int32_t>("has_bias")
                                  .Attr<int32_t>("rule")  // enum Rule
                                  .Attr<float>("eps")
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("rest1")  // 1 - b1
                                  .Attr<float>("rest2"));
