// Host-side helpers shared by the CPU and CUDA kernel sets: the sizes of a CROWN call and raw
// pointers of optional tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gmbound {

// Lambda [M, B, K, S...] against bounds [N, B, S...]; S is the per-sample block size.
struct Dims {
  int64_t M, N, B, K, S;
};

inline Dims lam_dims(const at::Tensor& lam, const at::Tensor& lower) {
  Dims d;
  d.M = lam.size(0);
  d.B = lam.size(1);
  d.K = lam.size(2);
  d.N = lower.size(0);
  d.S = d.N * d.B == 0 ? 0 : lower.numel() / (d.N * d.B);
  return d;
}

// The data of an optional (possibly undefined) tensor, or nullptr.
template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace gmbound
