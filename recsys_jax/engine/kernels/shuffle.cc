// The keyed Feistel permutation of recsys_jax.shuffle.feistel_permutation, for XLA's CPU
// backend: the same rounds and the same compaction, bit for bit, in one sequential pass.
// XLA computes the compaction with a prefix sum and a scatter over 2^m elements, more than
// a millisecond at 100k ratings on the 2-core CPU; here it is a loop that appends.
//
// For x in 0 .. 2^m - 1 in order: four rounds, each XORing the high part with
// mix(low ^ key_r) masked to its width, then swapping the parts (an unbalanced Feistel
// network when m is odd); values below `limit` are appended. The first `limit` entries of
// the output are the permutation, the rest 0.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {
namespace ffi = xla::ffi;
using Keys = ffi::Buffer<ffi::U32, 1>;
using Limit = ffi::Buffer<ffi::S32, 0>;
using Out = ffi::Buffer<ffi::S32, 1>;

inline uint32_t mix(uint32_t x) {  // murmur3's 32-bit finaliser, as recsys_jax.shuffle._mix
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

ffi::Error FeistelPermutation(Keys keys, Limit limit, ffi::Result<Out> out, int32_t bits) {
  const int64_t n = out->element_count();
  const int64_t rounds = keys.element_count();
  const uint32_t* key = keys.typed_data();
  const int64_t count = limit.typed_data()[0];
  if (bits < 2 || bits > 31 || (int64_t{1} << bits) < count || count > n)
    return ffi::Error::InvalidArgument("feistel permutation: limit out of range for the bits");
  int32_t* o = out->typed_data();
  const int64_t size = int64_t{1} << bits;
  std::vector<uint32_t> x(size);
  for (int64_t i = 0; i < size; ++i) x[i] = static_cast<uint32_t>(i);
  int low_bits = bits / 2;
  for (int64_t r = 0; r < rounds; ++r) {  // round by round: each loop vectorises
    const int high_bits = bits - low_bits;
    const uint32_t low_mask = (1u << low_bits) - 1, high_mask = (1u << high_bits) - 1, k = key[r];
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) {
      const uint32_t low = x[i] & low_mask, high = x[i] >> low_bits;
      x[i] = (low << high_bits) | (high ^ (mix(low ^ k) & high_mask));
    }
    low_bits = high_bits;
  }
  int64_t j = 0;
  for (int64_t i = 0; i < size && j < n; ++i) {  // compaction, without a branch to mispredict
    o[j] = static_cast<int32_t>(x[i]);
    j += x[i] < static_cast<uint32_t>(count);
  }
  for (; j < n; ++j) o[j] = 0;
  return ffi::Error::Success();
}

// recsys_jax.shuffle.blocked_permutation's order, the same values: the blocks in the order
// `visit`, block b's positions starts[b] + (j + shift[b]) mod sizes[b] for j = 0, 1, ..., then
// zeros. XLA finds each position's block by a binary search over the block ends, element by
// element (about 0.14 s at 5M ratings on the 2-core CPU); here it is two loops per block.
using Ints = ffi::Buffer<ffi::S32, 1>;

ffi::Error BlockedPermutation(Ints starts, Ints sizes, Ints visit, Ints shift, ffi::Result<Out> out) {
  const int64_t n = out->element_count(), k = sizes.element_count();
  if (starts.element_count() != k || visit.element_count() != k || shift.element_count() != k)
    return ffi::Error::InvalidArgument("blocked permutation: starts, sizes, visit and shift of different lengths");
  const int32_t *st = starts.typed_data(), *sz = sizes.typed_data(), *vi = visit.typed_data(),
                *sh = shift.typed_data();
  int64_t total = 0;
  std::vector<char> seen(k, 0);  // the writes follow `visit`: each block must be visited once
  for (int64_t b = 0; b < k; ++b) {
    if (vi[b] < 0 || vi[b] >= k) return ffi::Error::InvalidArgument("blocked permutation: visit out of range");
    if (seen[vi[b]]++) return ffi::Error::InvalidArgument("blocked permutation: visit repeats a block");
    if (sz[b] < 0 || sh[b] < 0 || sh[b] >= std::max(sz[b], 1))
      return ffi::Error::InvalidArgument("blocked permutation: a block's size or shift out of range");
    total += sz[b];
  }
  if (total > n) return ffi::Error::InvalidArgument("blocked permutation: the blocks hold more than n ratings");
  int32_t* o = out->typed_data();
  for (int64_t slot = 0; slot < k; ++slot) {
    const int32_t b = vi[slot], first = st[b], size = sz[b], s = sh[b];
    for (int32_t v = s; v < size; ++v) *o++ = first + v;
    for (int32_t v = 0; v < s && v < size; ++v) *o++ = first + v;
  }
  for (int64_t j = total; j < n; ++j) *o++ = 0;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysBlockedPermutation, BlockedPermutation,
                              ffi::Ffi::Bind().Arg<Ints>().Arg<Ints>().Arg<Ints>().Arg<Ints>().Ret<Out>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RecsysFeistelPermutation, FeistelPermutation,
                              ffi::Ffi::Bind().Arg<Keys>().Arg<Limit>().Ret<Out>().Attr<int32_t>("bits"));
