// The sequential draws of one relational block's features in a Gibbs sweep of the Bayesian
// factorization machine, for XLA's CPU backend (an XLA FFI custom call;
// recsys_jax/engine/kernels/__init__.py builds and registers it). recsys_jax.models.bfm
// writes the maths and holds the same loop in JAX (_sequential), which this computes to
// float rounding (tested).
//
// Feature j of the block (a movie of the sets N(u), or a user of the sets N(i)) appears in
// the block rows b of its column (col_rows[j, :], values x = col_values[j, :]; padding
// entries have the row R and the value 0). Given the block rows' sums over their ratings
// (cnt, S = s1, S2 = s2, E = e1, R = er; length R + 1, the last one padding's) and, for a
// factor, the block's Q (qb), each feature in turn is drawn from its conditional
//   c_b = Q_b - v_j x_b (factor) or 1 (linear term),
//   H = sum_b x_b^2 (cnt_b c_b^2 + 2 c_b S_b + S2_b),  G = sum_b x_b (c_b E_b + R_b),
//   P = alpha H + lambda,  v_j' = (alpha (G + v_j H) + lambda mu) / P + z_j / sqrt(P),
// and the sums follow it (delta = v_j' - v_j):
//   E_b -= delta x_b (cnt_b c_b + S_b),  R_b -= delta x_b (c_b S_b + S2_b),  Q_b += delta x_b.
// One thread: each draw depends on the ones before.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {
namespace ffi = xla::ffi;
using Matrix = ffi::Buffer<ffi::F32, 2>;
using IntMatrix = ffi::Buffer<ffi::S32, 2>;
using Vector = ffi::Buffer<ffi::F32, 1>;

ffi::Error BfmSequential(IntMatrix col_rows, Matrix col_values, Vector old, Vector z, Vector cnt, Vector s1,
                         Vector s2, Vector e1, Vector er, Vector qb, Vector scalars, ffi::Result<Vector> out,
                         ffi::Result<Vector> qb_out, int32_t factor) {
  const int64_t features = col_rows.dimensions()[0], width = col_rows.dimensions()[1];
  const int64_t rows = cnt.element_count();  // R + 1
  if (col_values.dimensions()[0] != features || col_values.dimensions()[1] != width)
    return ffi::Error::InvalidArgument("bfm sequential: col_rows and col_values of different shapes");
  if (old.element_count() != features || z.element_count() != features || out->element_count() != features)
    return ffi::Error::InvalidArgument("bfm sequential: old, z and out must hold one value per feature");
  if (s1.element_count() != rows || s2.element_count() != rows || e1.element_count() != rows ||
      er.element_count() != rows || qb.element_count() != rows || qb_out->element_count() != rows)
    return ffi::Error::InvalidArgument("bfm sequential: the block rows' sums of different lengths");
  if (scalars.element_count() != 3) return ffi::Error::InvalidArgument("bfm sequential: scalars hold lambda, mu, alpha");
  const int32_t* idx = col_rows.typed_data();
  bool bad = false;
  for (int64_t s = 0; s < features * width; ++s) bad |= idx[s] < 0 || idx[s] >= rows;
  if (bad) return ffi::Error::InvalidArgument("bfm sequential: a block row index is out of range");

  const float lambda = scalars.typed_data()[0], mu = scalars.typed_data()[1], alpha = scalars.typed_data()[2];
  const float* x_all = col_values.typed_data();
  const float *n = cnt.typed_data(), *a1 = s1.typed_data(), *a2 = s2.typed_data();
  std::vector<float> e(e1.typed_data(), e1.typed_data() + rows), r(er.typed_data(), er.typed_data() + rows);
  float* q = qb_out->typed_data();
  std::memcpy(q, qb.typed_data(), sizeof(float) * rows);
  float* v = out->typed_data();
  std::memcpy(v, old.typed_data(), sizeof(float) * features);
  const float* zz = z.typed_data();
  for (int64_t j = 0; j < features; ++j) {
    const int32_t* b = idx + j * width;
    const float* x = x_all + j * width;
    const float vj = v[j];
    float h2 = 0.0f, he = 0.0f;
    for (int64_t l = 0; l < width; ++l) {
      const int32_t row = b[l];
      const float c = factor ? q[row] - vj * x[l] : 1.0f;
      h2 += x[l] * x[l] * (n[row] * c * c + 2.0f * c * a1[row] + a2[row]);
      he += x[l] * (c * e[row] + r[row]);
    }
    const float precision = alpha * h2 + lambda;
    const float next = (alpha * (he + vj * h2) + lambda * mu) / precision + zz[j] / std::sqrt(precision);
    const float delta = next - vj;
    for (int64_t l = 0; l < width; ++l) {
      const int32_t row = b[l];
      const float c = factor ? q[row] - vj * x[l] : 1.0f;
      e[row] -= delta * x[l] * (n[row] * c + a1[row]);
      r[row] -= delta * x[l] * (c * a1[row] + a2[row]);
      if (factor) q[row] += delta * x[l];
    }
    v[j] = next;
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysBfmSequential, BfmSequential,
                              ffi::Ffi::Bind()
                                  .Arg<IntMatrix>()  // col_rows, int32[F, L] (padding: R)
                                  .Arg<Matrix>()  // col_values, float32[F, L] (padding: 0)
                                  .Arg<Vector>()  // old values, float32[F]
                                  .Arg<Vector>()  // z, float32[F]: standard normal draws
                                  .Arg<Vector>()  // cnt, float32[R + 1]
                                  .Arg<Vector>()  // S
                                  .Arg<Vector>()  // S2
                                  .Arg<Vector>()  // E
                                  .Arg<Vector>()  // R
                                  .Arg<Vector>()  // Q (a factor's block sums; ignored for a linear term)
                                  .Arg<Vector>()  // [lambda, mu, alpha]
                                  .Ret<Vector>()  // the new values, float32[F]
                                  .Ret<Vector>()  // the new Q, float32[R + 1]
                                  .Attr<int32_t>("factor"));
