// CUDA kernels of max pooling's CROWN step (gmbound::max_pool2d_relax); the formulas are
// bound_math.h's, as on the CPU (csrc/cpu/maxpool_cpu.cpp). Plain contiguous layout.
//
// Determinism without atomics: in the forward pass one thread owns one channel plane of one row of
// lam_in and scatters that plane's windows in order (windows of one channel only ever reach their
// own plane), writing its share of the bias to its own slot; a second kernel adds a row's slots in
// order. In the backward pass every output element is written by one thread, which loops over the
// radii (Lambda shared by them) or the K specification rows (gradients of the lines).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "bound_math.h"
#include "kernels.h"

namespace gmbound {
namespace {

constexpr int kPoolThreads = 256;

template <typename T>
using pool_acc_t = at::acc_type<T, /*is_cuda=*/false>;  // double, as on the CPU

unsigned int pool_blocks(int64_t n) {
  const int64_t b = (n + kPoolThreads - 1) / kPoolThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 32)));
}

#define GMBOUND_POOL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// One thread per (row = (n B + b) K + k, channel c).
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
    maxpool_forward_kernel(const T* __restrict__ lam, const int64_t* __restrict__ index, const T* __restrict__ slope,
                           const T* __restrict__ ubias, T* __restrict__ out, pool_acc_t<T>* __restrict__ partial,
                           int64_t M, int64_t B, int64_t K, int64_t C, int64_t P, int64_t HW, int64_t planes) {
  using A = pool_acc_t<T>;
  GMBOUND_POOL_LOOP(i, planes) {
    const int64_t row = i / C, c = i % C, nb = row / K, k = row % K, n = nb / B, b = nb % B;
    const int64_t m = M == 1 ? 0 : n;
    const T* v = lam + (((m * B + b) * K + k) * C + c) * P;
    T* o = out + i * HW;
    for (int64_t h = 0; h < HW; ++h) o[h] = T(0);
    const int64_t sel = (nb * C + c) * P;
    A acc = 0;
    for (int64_t p = 0; p < P; ++p) {
      const T x = v[p];
      o[index[sel + p]] += math::relaxed_lam(x, T(1), slope[sel + p]);
      acc += A(math::neg_part(x) * ubias[sel + p]);
    }
    partial[i] = acc;
  }
}

// bias[row] = sum over c of partial[row, c], in order.
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
    sum_planes_kernel(const pool_acc_t<T>* __restrict__ partial, int64_t rows, int64_t C, T* __restrict__ bias) {
  GMBOUND_POOL_LOOP(row, rows) {
    pool_acc_t<T> acc = 0;
    for (int64_t c = 0; c < C; ++c) acc += partial[row * C + c];
    bias[row] = static_cast<T>(acc);
  }
}

// Gradient w.r.t. Lambda: one thread per element of g_lam, (task, k, c, p); task = sample b when
// Lambda is shared by the N radii (its gradient sums over them), else the row nb.
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
    maxpool_grad_lam_kernel(const T* __restrict__ g_out, const T* __restrict__ g_bias, const T* __restrict__ lam,
                            const int64_t* __restrict__ index, const T* __restrict__ slope,
                            const T* __restrict__ ubias, T* __restrict__ g_lam, int64_t N, int64_t B, int64_t K,
                            int64_t C, int64_t P, int64_t HW, bool shared, int64_t total) {
  GMBOUND_POOL_LOOP(i, total) {
    const int64_t p = i % P, c = (i / P) % C, k = (i / (P * C)) % K, task = i / (P * C * K);
    const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
    const T x = lam[i];
    T r = 0;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t nb = n * B + b, j = (nb * C + c) * P + p;
      const T g = g_out[((nb * K + k) * C + c) * HW + index[j]];
      r += math::relaxed_lam_grad(x, g, g_bias[nb * K + k], T(1), slope[j], ubias[j]);
    }
    g_lam[i] = r;
  }
}

// Gradients w.r.t. the lines: one thread per window (nb, c, p), summing over the K rows.
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
    maxpool_grad_lines_kernel(const T* __restrict__ g_out, const T* __restrict__ g_bias, const T* __restrict__ lam,
                              const int64_t* __restrict__ index, T* __restrict__ g_slope, T* __restrict__ g_ubias,
                              int64_t M, int64_t B, int64_t K, int64_t C, int64_t P, int64_t HW, int64_t windows) {
  using A = pool_acc_t<T>;
  GMBOUND_POOL_LOOP(j, windows) {
    const int64_t p = j % P, c = (j / P) % C, nb = j / (P * C), n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
    const int64_t at = index[j];
    A gs = 0, gt = 0;
    for (int64_t k = 0; k < K; ++k) {
      const T xn = math::neg_part(lam[(((m * B + b) * K + k) * C + c) * P + p]);
      gs += A(g_out[((nb * K + k) * C + c) * HW + at] * xn);
      gt += A(g_bias[nb * K + k] * xn);
    }
    g_slope[j] = static_cast<T>(gs);
    g_ubias[j] = static_cast<T>(gt);
  }
}

void check_pool_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "gmbound CUDA kernel: ", what, " is on ", t.device());
  TORCH_CHECK(t.is_contiguous(), "gmbound CUDA kernel: ", what, " is not contiguous");
}

}  // namespace

void CudaKernels::maxpool_relax_forward(const at::Tensor& lam, const at::Tensor& index, const at::Tensor& up_slope,
                                        const at::Tensor& up_bias, bool channels_last, const at::Tensor& lam_in,
                                        const at::Tensor& bias) {
  TORCH_CHECK(!channels_last, "gmbound CUDA kernels take contiguous (NCHW) blocks");
  for (auto* t : {&lam, &index, &up_slope, &up_bias, &lam_in, &bias}) check_pool_cuda(*t, "max_pool2d_relax operand");
  const int64_t M = lam.size(0), B = lam.size(1), K = lam.size(2), C = lam.size(3);
  const int64_t N = up_slope.size(0), P = lam.numel() == 0 ? 0 : lam.numel() / (M * B * K * C);
  const int64_t HW = lam_in.numel() == 0 ? 0 : lam_in.numel() / (N * B * K * C);
  const int64_t rows = N * B * K, planes = rows * C;
  if (planes == 0) {
    bias.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial = at::empty({planes}, lam.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_max_pool2d_relax_cuda", [&] {
    maxpool_forward_kernel<scalar_t><<<pool_blocks(planes), kPoolThreads, 0, stream>>>(
        lam.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(), up_slope.const_data_ptr<scalar_t>(),
        up_bias.const_data_ptr<scalar_t>(), lam_in.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<double>(), M,
        B, K, C, P, HW, planes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_planes_kernel<scalar_t><<<pool_blocks(rows), kPoolThreads, 0, stream>>>(
        partial.const_data_ptr<double>(), rows, C, bias.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::maxpool_relax_backward(const at::Tensor& g_lam_in, const at::Tensor& g_bias, const at::Tensor& lam,
                                         const at::Tensor& index, const at::Tensor& up_slope,
                                         const at::Tensor& up_bias, bool channels_last, const at::Tensor& g_lam,
                                         const at::Tensor& g_up_slope, const at::Tensor& g_up_bias) {
  TORCH_CHECK(!channels_last, "gmbound CUDA kernels take contiguous (NCHW) blocks");
  for (auto* t : {&g_lam_in, &g_bias, &lam, &index, &up_slope, &up_bias, &g_lam, &g_up_slope, &g_up_bias}) {
    check_pool_cuda(*t, "max_pool2d_relax_backward operand");
  }
  const int64_t M = lam.size(0), B = lam.size(1), K = lam.size(2), C = lam.size(3);
  const int64_t N = up_slope.size(0), P = lam.numel() == 0 ? 0 : lam.numel() / (M * B * K * C);
  const int64_t HW = g_lam_in.numel() == 0 ? 0 : g_lam_in.numel() / (N * B * K * C);
  if (lam.numel() == 0 || up_slope.numel() == 0) {
    g_lam.zero_();
    g_up_slope.zero_();
    g_up_bias.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool shared = M == 1 && N > 1;
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_max_pool2d_relax_backward_cuda", [&] {
    maxpool_grad_lam_kernel<scalar_t><<<pool_blocks(lam.numel()), kPoolThreads, 0, stream>>>(
        g_lam_in.const_data_ptr<scalar_t>(), g_bias.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(),
        index.const_data_ptr<int64_t>(), up_slope.const_data_ptr<scalar_t>(), up_bias.const_data_ptr<scalar_t>(),
        g_lam.mutable_data_ptr<scalar_t>(), N, B, K, C, P, HW, shared, lam.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    maxpool_grad_lines_kernel<scalar_t><<<pool_blocks(up_slope.numel()), kPoolThreads, 0, stream>>>(
        g_lam_in.const_data_ptr<scalar_t>(), g_bias.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(),
        index.const_data_ptr<int64_t>(), g_up_slope.mutable_data_ptr<scalar_t>(),
        g_up_bias.mutable_data_ptr<scalar_t>(), M, B, K, C, P, HW, up_slope.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace gmbound
