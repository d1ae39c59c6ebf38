// The draws of one relational block's features in a Gibbs sweep of the Bayesian
// factorization machine, for XLA's CPU backend (an XLA FFI custom call;
// recsys_jax/engine/kernels/__init__.py builds and registers it). recsys_jax.models.bfm
// writes the maths and holds the same steps in JAX (_block_update), which this computes to
// float rounding (tested).
//
// Block rows b (a user's set N(u), or a movie's N(i)) hold features j with values x_bj: CSR
// (ptr, feat, val) by block row, CSC (col_ptr, col_row, col_val) by feature. Rating n reads
// block row rows_of[n]. For factor f (factor = 1; a linear term: factor = 0):
//  1. per block row, Q_b = sum_j x_bj v_j and SS_b = sum_j x_bj^2 v_j^2 (linear: L_b = sum x w);
//  2. per block row, over its ratings, with r_n = q_n - Q_b (the other groups' part; 0 for a
//     linear term): the count, S = sum r, S2 = sum r^2, E = sum e, R = sum r e;
//  3. each feature in turn, c_b = Q_b - v_j x_bj (linear: 1),
//       H = sum_b x_b^2 (cnt_b c_b^2 + 2 c_b S_b + S2_b),  G = sum_b x_b (c_b E_b + R_b),
//       P = alpha H + lambda,  v_j' = (alpha (G + v_j H) + lambda mu) / P + z_j / sqrt(P),
//     and with delta = v_j' - v_j: E_b -= delta x_b (cnt_b c_b + S_b),
//     R_b -= delta x_b (c_b S_b + S2_b), Q_b += delta x_b;
//  4. Q and SS again from the new values, and each rating's e and q: with dq = Q'_b - Q_b,
//     e_n -= dq (q_n + dq / 2) - (SS'_b - SS_b) / 2, q_n += dq (linear: e_n -= L'_b - L_b).
// One thread: each draw depends on the ones before; every step is a pass over the ratings
// or the block's entries. BfmOnehot below draws a one-hot group's features.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {
namespace ffi = xla::ffi;
using Ints = ffi::Buffer<ffi::S32, 1>;
using Vector = ffi::Buffer<ffi::F32, 1>;

// A draw from N((alpha (he + v h2) + lambda mu) / P, 1 / P), P = alpha h2 + lambda, given the
// standard normal z: the conditional of one coordinate (recsys_jax.models.bfm._draw).
inline float draw(float h2, float he, float v, float lambda, float mu, float alpha, float z) {
  const float precision = alpha * h2 + lambda;
  return (alpha * (he + v * h2) + lambda * mu) / precision + z / std::sqrt(precision);
}

void row_sums(const int32_t* ptr, const int32_t* feat, const float* val, int64_t rows, const float* v, bool factor,
              float* q, float* ss) {
  for (int64_t b = 0; b < rows; ++b) {
    float a = 0.0f, c = 0.0f;
    for (int32_t s = ptr[b]; s < ptr[b + 1]; ++s) {
      const float t = val[s] * v[feat[s]];
      a += t;
      c += t * t;
    }
    q[b] = a;
    ss[b] = factor ? c : 0.0f;
  }
}

ffi::Error BfmBlock(Ints ptr, Ints feat, Vector val, Ints col_ptr, Ints col_row, Vector col_val, Ints rows_of,
                    Vector q_in, Vector e_in, Vector old, Vector z, Vector scalars, ffi::Result<Vector> out,
                    ffi::Result<Vector> e_out, ffi::Result<Vector> q_out, int32_t factor) {
  const int64_t rows = ptr.element_count() - 1, features = col_ptr.element_count() - 1;
  const int64_t nnz = feat.element_count(), n = rows_of.element_count();
  if (rows < 0 || features < 0 || val.element_count() != nnz || col_row.element_count() < nnz ||
      col_val.element_count() != col_row.element_count())
    return ffi::Error::InvalidArgument("bfm block: the CSR and CSC arrays do not match");
  if (q_in.element_count() != n || e_in.element_count() != n || e_out->element_count() != n ||
      q_out->element_count() != n)
    return ffi::Error::InvalidArgument("bfm block: q, e and rows_of must hold one value per rating");
  if (old.element_count() != features || z.element_count() != features || out->element_count() != features)
    return ffi::Error::InvalidArgument("bfm block: old, z and out must hold one value per feature");
  if (scalars.element_count() != 3) return ffi::Error::InvalidArgument("bfm block: scalars hold lambda, mu, alpha");
  const int32_t *rp = ptr.typed_data(), *fe = feat.typed_data(), *cp = col_ptr.typed_data();
  const int32_t *cr = col_row.typed_data(), *ro = rows_of.typed_data();
  bool bad = rp[0] != 0 || rp[rows] != nnz || cp[0] != 0 || cp[features] != nnz;
  for (int64_t b = 0; b < rows; ++b) bad |= rp[b + 1] < rp[b];
  for (int64_t j = 0; j < features; ++j) bad |= cp[j + 1] < cp[j];
  if (bad) return ffi::Error::InvalidArgument("bfm block: a row or column pointer is not a pointer over the entries");
  for (int64_t s = 0; s < nnz; ++s) bad |= fe[s] < 0 || fe[s] >= features || cr[s] < 0 || cr[s] >= rows;
  for (int64_t i = 0; i < n; ++i) bad |= ro[i] < 0 || ro[i] >= rows;
  if (bad) return ffi::Error::InvalidArgument("bfm block: an index is out of range");

  const bool fac = factor != 0;
  const float lambda = scalars.typed_data()[0], mu = scalars.typed_data()[1], alpha = scalars.typed_data()[2];
  const float *va = val.typed_data(), *cv = col_val.typed_data(), *q = q_in.typed_data(), *e = e_in.typed_data();
  std::vector<float> q_old(rows), ss_old(rows), cnt(rows, 0.0f), s1(rows, 0.0f), s2(rows, 0.0f), e1(rows, 0.0f),
      er(rows, 0.0f);
  row_sums(rp, fe, va, rows, old.typed_data(), fac, q_old.data(), ss_old.data());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = ro[i];
    const float r = fac ? q[i] - q_old[b] : 0.0f;
    cnt[b] += 1.0f;
    s1[b] += r;
    s2[b] += r * r;
    e1[b] += e[i];
    er[b] += r * e[i];
  }
  std::vector<float> qb(q_old);
  float* v = out->typed_data();
  std::memcpy(v, old.typed_data(), sizeof(float) * features);
  const float* zz = z.typed_data();
  for (int64_t j = 0; j < features; ++j) {
    const float vj = v[j];
    float h2 = 0.0f, he = 0.0f;
    for (int32_t s = cp[j]; s < cp[j + 1]; ++s) {
      const int32_t b = cr[s];
      const float x = cv[s], c = fac ? qb[b] - vj * x : 1.0f;
      h2 += x * x * (cnt[b] * c * c + 2.0f * c * s1[b] + s2[b]);
      he += x * (c * e1[b] + er[b]);
    }
    const float next = draw(h2, he, vj, lambda, mu, alpha, zz[j]);
    const float delta = next - vj;
    for (int32_t s = cp[j]; s < cp[j + 1]; ++s) {
      const int32_t b = cr[s];
      const float x = cv[s], c = fac ? qb[b] - vj * x : 1.0f;
      e1[b] -= delta * x * (cnt[b] * c + s1[b]);
      er[b] -= delta * x * (c * s1[b] + s2[b]);
      if (fac) qb[b] += delta * x;
    }
    v[j] = next;
  }
  std::vector<float> q_new(rows), ss_new(rows);
  row_sums(rp, fe, va, rows, v, fac, q_new.data(), ss_new.data());
  float *eo = e_out->typed_data(), *qo = q_out->typed_data();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = ro[i];
    const float dq = q_new[b] - q_old[b];
    if (fac) {
      eo[i] = e[i] - (dq * (q[i] + 0.5f * dq) - 0.5f * (ss_new[b] - ss_old[b]));
      qo[i] = q[i] + dq;
    } else {
      eo[i] = e[i] - dq;
      qo[i] = q[i];
    }
  }
  return ffi::Error::Success();
}

// A one-hot group (the user, movie or day ids): rating n has the feature idx[n] alone in the
// group, so the features share no rating and are drawn all at once: per feature,
// H = sum h^2, G = sum h e over its ratings (h = q - v_j for a factor, 1 for a linear term),
// the draw as above, then each rating's e -= delta h and (a factor) q += delta.
ffi::Error BfmOnehot(Ints idx, Vector q_in, Vector e_in, Vector old, Vector z, Vector scalars,
                     ffi::Result<Vector> out, ffi::Result<Vector> e_out, ffi::Result<Vector> q_out, int32_t factor) {
  const int64_t n = idx.element_count(), features = old.element_count();
  if (q_in.element_count() != n || e_in.element_count() != n || e_out->element_count() != n ||
      q_out->element_count() != n)
    return ffi::Error::InvalidArgument("bfm one-hot: q, e and idx must hold one value per rating");
  if (z.element_count() != features || out->element_count() != features)
    return ffi::Error::InvalidArgument("bfm one-hot: old, z and out must hold one value per feature");
  if (scalars.element_count() != 3) return ffi::Error::InvalidArgument("bfm one-hot: scalars hold lambda, mu, alpha");
  const int32_t* id = idx.typed_data();
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= id[i] < 0 || id[i] >= features;
  if (bad) return ffi::Error::InvalidArgument("bfm one-hot: an index is out of range");
  const bool fac = factor != 0;
  const float lambda = scalars.typed_data()[0], mu = scalars.typed_data()[1], alpha = scalars.typed_data()[2];
  const float *q = q_in.typed_data(), *e = e_in.typed_data(), *v = old.typed_data(), *zz = z.typed_data();
  std::vector<float> h2(features, 0.0f), he(features, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float h = fac ? q[i] - v[id[i]] : 1.0f;
    h2[id[i]] += h * h;
    he[id[i]] += h * e[i];
  }
  float* w = out->typed_data();
  for (int64_t j = 0; j < features; ++j) {
    w[j] = draw(h2[j], he[j], v[j], lambda, mu, alpha, zz[j]);
  }
  float *eo = e_out->typed_data(), *qo = q_out->typed_data();
  for (int64_t i = 0; i < n; ++i) {
    const float delta = w[id[i]] - v[id[i]];
    const float h = fac ? q[i] - v[id[i]] : 1.0f;
    eo[i] = e[i] - delta * h;
    qo[i] = fac ? q[i] + delta : q[i];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysBfmOnehot, BfmOnehot,
                              ffi::Ffi::Bind()
                                  .Arg<Ints>()  // each rating's feature, int32[N]
                                  .Arg<Vector>()  // q, float32[N]
                                  .Arg<Vector>()  // e, float32[N]
                                  .Arg<Vector>()  // the old values, float32[F]
                                  .Arg<Vector>()  // z, float32[F]
                                  .Arg<Vector>()  // [lambda, mu, alpha]
                                  .Ret<Vector>()  // the new values
                                  .Ret<Vector>()  // the new e
                                  .Ret<Vector>()  // the new q
                                  .Attr<int32_t>("factor"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysBfmBlock, BfmBlock,
                              ffi::Ffi::Bind()
                                  .Arg<Ints>()  // CSR row pointer, int32[R + 1]
                                  .Arg<Ints>()  // CSR features, int32[nnz]
                                  .Arg<Vector>()  // CSR values, float32[nnz]
                                  .Arg<Ints>()  // CSC column pointer, int32[F + 1]
                                  .Arg<Ints>()  // CSC rows, int32[nnz + padding]
                                  .Arg<Vector>()  // CSC values
                                  .Arg<Ints>()  // each rating's block row, int32[N]
                                  .Arg<Vector>()  // q, float32[N]
                                  .Arg<Vector>()  // e, float32[N]
                                  .Arg<Vector>()  // the old values, float32[F]
                                  .Arg<Vector>()  // z, float32[F]
                                  .Arg<Vector>()  // [lambda, mu, alpha]
                                  .Ret<Vector>()  // the new values
                                  .Ret<Vector>()  // the new e
                                  .Ret<Vector>()  // the new q
                                  .Attr<int32_t>("factor"));
