// CPU kernels of max pooling's CROWN step (gmbound::max_pool2d_relax): each window's coefficient
// lam^+ + lam^- s goes to the input entry the window picked, in one pass over Lambda instead of the
// reference's six (two clamps, the product, the bias product, the zero fill and scatter_add).
// Parallel over (radius, sample) rows; within a row the scatter runs in a fixed order, so windows
// that pick the same entry (overlapping pooling) add up the same way on every run.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "bound_math.h"
#include "kernels.h"

namespace gmbound {
namespace {

// Sizes of one call: Lambda [M, B, K, C, P] (M = 1 or N), lines [N, B, C, P], lam_in [N, B, K, C, HW].
struct PoolDims {
  int64_t M, N, B, K, C, P, HW;
};

PoolDims pool_dims(const at::Tensor& lam, const at::Tensor& lines, const at::Tensor& lam_in) {
  const int64_t N = lines.size(0), B = lines.size(1), C = lines.size(2);
  const int64_t P = N * B * C == 0 ? 0 : lines.numel() / (N * B * C);
  const int64_t K = lam.size(2);
  const int64_t HW = N * B * K * C == 0 ? 0 : lam_in.numel() / (N * B * K * C);
  return {lam.size(0), N, B, K, C, P, HW};
}

// Offsets of (channel c, position p) in a block of C channels of `size` positions.
inline int64_t at_cp(int64_t c, int64_t p, int64_t C, int64_t size, bool cl) { return cl ? p * C + c : c * size + p; }

int64_t rows_per_task(int64_t work_per_row) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row)); }

template <typename T>
void forward_impl(const T* lam, const int64_t* index, const T* slope, const T* ubias, bool cl, T* out, T* bias,
                  const PoolDims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t C = d.C, P = d.P, HW = d.HW, K = d.K, B = d.B;
  at::parallel_for(0, d.N * B * K, rows_per_task(C * (P + HW)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = (n B + b) K + k
      const int64_t nb = row / K, k = row % K, n = nb / B, b = nb % B, m = d.M == 1 ? 0 : n;
      const T* v = lam + ((m * B + b) * K + k) * C * P;
      T* o = out + row * C * HW;
      std::fill(o, o + C * HW, T(0));
      const int64_t sel = nb * C * P;
      acc_t acc = 0;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t p = 0; p < P; ++p) {
          const int64_t j = sel + c * P + p;
          const T x = v[at_cp(c, p, C, P, cl)];
          o[at_cp(c, index[j], C, HW, cl)] += math::relaxed_lam(x, T(1), slope[j]);
          acc += acc_t(math::neg_part(x) * ubias[j]);
        }
      }
      bias[row] = static_cast<T>(acc);
    }
  });
}

template <typename T>
void backward_impl(const T* g_out, const T* g_bias, const T* lam, const int64_t* index, const T* slope,
                   const T* ubias, bool cl, T* g_lam, T* g_slope, T* g_ubias, const PoolDims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t C = d.C, P = d.P, HW = d.HW, K = d.K, B = d.B, N = d.N;
  // Lambda shared by all radii (M = 1 < N): its gradient sums over the radii, so one task per
  // sample, and no two tasks write the same row of any output.
  const bool shared = d.M == 1 && N > 1;
  const int64_t tasks = shared ? B : N * B;
  at::parallel_for(0, tasks, rows_per_task((shared ? N : 1) * K * C * P), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(2 * C * P);
    acc_t* gs = acc.data();
    acc_t* gt = gs + C * P;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t nb = n * B + b, m = d.M == 1 ? 0 : n, sel = nb * C * P;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const T* v = lam + ((m * B + b) * K + k) * C * P;
          T* gv = g_lam + ((m * B + b) * K + k) * C * P;
          const T* go = g_out + (nb * K + k) * C * HW;
          const T gb = g_bias[nb * K + k];
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t p = 0; p < P; ++p) {
              const int64_t j = sel + c * P + p, at_lam = at_cp(c, p, C, P, cl);
              const T x = v[at_lam], xn = math::neg_part(x);
              const T g = go[at_cp(c, index[j], C, HW, cl)];
              const T r = math::relaxed_lam_grad(x, g, gb, T(1), slope[j], ubias[j]);
              gv[at_lam] = n > n0 ? gv[at_lam] + r : r;
              gs[c * P + p] += acc_t(g * xn);
              gt[c * P + p] += acc_t(gb * xn);
            }
          }
        }
        for (int64_t i = 0; i < C * P; ++i) {
          g_slope[sel + i] = static_cast<T>(gs[i]);
          g_ubias[sel + i] = static_cast<T>(gt[i]);
        }
      }
    }
  });
}

void check_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "gmbound CPU kernel: ", what, " is on ", t.device());
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "gmbound CPU kernel: ", what, " is not dense");
}

}  // namespace

void CpuKernels::maxpool_relax_forward(const at::Tensor& lam, const at::Tensor& index, const at::Tensor& up_slope,
                                       const at::Tensor& up_bias, bool channels_last, const at::Tensor& lam_in,
                                       const at::Tensor& bias) {
  for (auto* t : {&lam, &index, &up_slope, &up_bias, &lam_in, &bias}) check_cpu(*t, "max_pool2d_relax operand");
  const PoolDims d = pool_dims(lam, up_slope, lam_in);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_max_pool2d_relax_cpu", [&] {
    forward_impl<scalar_t>(lam.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                           up_slope.const_data_ptr<scalar_t>(), up_bias.const_data_ptr<scalar_t>(), channels_last,
                           lam_in.mutable_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>(), d);
  });
}

void CpuKernels::maxpool_relax_backward(const at::Tensor& g_lam_in, const at::Tensor& g_bias, const at::Tensor& lam,
                                        const at::Tensor& index, const at::Tensor& up_slope,
                                        const at::Tensor& up_bias, bool channels_last, const at::Tensor& g_lam,
                                        const at::Tensor& g_up_slope, const at::Tensor& g_up_bias) {
  for (auto* t : {&g_lam_in, &g_bias, &lam, &index, &up_slope, &up_bias, &g_lam, &g_up_slope, &g_up_bias}) {
    check_cpu(*t, "max_pool2d_relax_backward operand");
  }
  const PoolDims d = pool_dims(lam, up_slope, g_lam_in);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_max_pool2d_relax_backward_cpu", [&] {
    backward_impl<scalar_t>(g_lam_in.const_data_ptr<scalar_t>(), g_bias.const_data_ptr<scalar_t>(),
                            lam.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                            up_slope.const_data_ptr<scalar_t>(), up_bias.const_data_ptr<scalar_t>(), channels_last,
                            g_lam.mutable_data_ptr<scalar_t>(), g_up_slope.mutable_data_ptr<scalar_t>(),
                            g_up_bias.mutable_data_ptr<scalar_t>(), d);
  });
}

}  // namespace gmbound
