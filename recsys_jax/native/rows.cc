// Row gathers and scatter-adds on float32 tables, as XLA FFI handlers for the CPU.
//
// XLA's CPU backend emits a gather or a scatter as a loop over scalar elements, each with
// its own index arithmetic and bounds handling; here a row is one contiguous copy or one
// vectorisable add. `recsys_jax.native` builds this file and registers the handlers;
// the semantics (clamped gather indices, dropped out-of-range scatter indices, duplicates
// summed in batch order) are documented there.
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error CheckTable(const ffi::Buffer<ffi::F32>& table, int64_t offset, int64_t width) {
  if (table.dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("recsys_jax native rows: the table must be 2-D");
  }
  if (offset < 0 || width < 0 || offset + width > table.dimensions()[1]) {
    return ffi::Error::InvalidArgument("recsys_jax native rows: columns out of the table");
  }
  return ffi::Error::Success();
}

// out[b, :] = table[clamp(index[b]), offset : offset + K], K = out's second dimension.
ffi::Error GatherRowsImpl(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> index,
                          ffi::ResultBuffer<ffi::F32> out, int64_t offset) {
  const int64_t batch = index.element_count();
  const int64_t k = batch > 0 ? out->element_count() / batch : 0;
  if (ffi::Error e = CheckTable(table, offset, k); e.failure()) return e;
  const int64_t n = table.dimensions()[0];
  const int64_t w = table.dimensions()[1];
  const float* src = table.typed_data();
  const int32_t* idx = index.typed_data();
  float* dst = out->typed_data();
  if (n == 0) {
    std::memset(dst, 0, sizeof(float) * batch * k);
    return ffi::Error::Success();
  }
  for (int64_t b = 0; b < batch; ++b) {
    int64_t i = idx[b];
    i = i < 0 ? 0 : (i >= n ? n - 1 : i);
    std::memcpy(dst + b * k, src + i * w + offset, sizeof(float) * k);
  }
  return ffi::Error::Success();
}

// out = table, then out[index[b], offset : offset + K] += values[b, :] for b in order,
// skipping indices outside [0, N). Runs in place when XLA aliases out with table.
ffi::Error ScatterAddRowsImpl(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> index,
                              ffi::Buffer<ffi::F32> values, ffi::ResultBuffer<ffi::F32> out,
                              int64_t offset) {
  const int64_t batch = index.element_count();
  const int64_t k = batch > 0 ? values.element_count() / batch : 0;
  if (ffi::Error e = CheckTable(table, offset, k); e.failure()) return e;
  const int64_t n = table.dimensions()[0];
  const int64_t w = table.dimensions()[1];
  float* dst = out->typed_data();
  if (dst != table.typed_data()) {
    std::memcpy(dst, table.typed_data(), sizeof(float) * n * w);
  }
  const int32_t* idx = index.typed_data();
  const float* src = values.typed_data();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t i = idx[b];
    if (i < 0 || i >= n) continue;
    float* __restrict row = dst + i * w + offset;
    const float* __restrict add = src + b * k;
    for (int64_t c = 0; c < k; ++c) row[c] += add[c];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysGatherRows, GatherRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("offset"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysScatterAddRows, ScatterAddRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("offset"));
