// CUDA kernels. Layout on CUDA: plain contiguous (per-sample blocks of S elements, channel c of
// position s is s / HW). Products (matmul, convolution) go through ATen (cuBLAS / cuDNN) in
// composite.h; these kernels do the element-wise and reduction work around them in one pass each.
//
// Threads run over the S positions of one (radius, sample) row and loop over the K specification
// rows, so the ReLU coefficients of a neuron are computed once for all K rows, and reductions over K
// (gradients of the bounds) stay in registers. Reductions over S (bias terms, the concretised bound)
// are a block reduction then one atomicAdd per block and row: their summation order is not fixed,
// so float32 results may differ from run to run in the last bits.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "composite.h"

namespace gmbound {
namespace {

constexpr int kThreads = 256;  // a multiple of 32 (block_sum relies on it)

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "gmbound CUDA kernel: ", what, " is on ", t.device());
  TORCH_CHECK(t.is_contiguous(), "gmbound CUDA kernel: ", what, " is not contiguous");
}

struct Dims {
  int64_t M, N, B, K, S;
};

Dims lam_dims(const at::Tensor& lam, const at::Tensor& lower) {
  Dims d;
  d.M = lam.size(0);
  d.B = lam.size(1);
  d.K = lam.size(2);
  d.N = lower.size(0);
  d.S = d.N * d.B == 0 ? 0 : lower.numel() / (d.N * d.B);
  return d;
}

// Blocks for a grid-stride loop over n elements.
unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 32)));
}

// Blocks for kernels with one block per (row, chunk): no grid-stride, so all must fit in one grid.
unsigned int grid_rows(int64_t blocks) {
  TORCH_CHECK(blocks <= 2147483647LL, "gmbound CUDA kernel: too many rows for one launch");
  return static_cast<unsigned int>(blocks);
}

// Sum of v over the block; the result is valid in thread 0. Every thread of the block must call it.
template <typename A>
__device__ A block_sum(A v, A* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[lane] : A(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // shared may be reused by the next call
  return v;
}

// ReLU relaxation of one neuron, exactly as reference relu_relaxation.
template <typename T>
__device__ __forceinline__ void relax_coeffs(T lo, T up, T& pos, T& neg, T& icp) {
  const bool active = lo >= T(0);
  const bool unstable = lo < T(0) && up > T(0);
  const T chord = unstable ? up / (up - lo) : T(0);
  neg = active ? T(1) : chord;
  icp = -chord * lo;
  pos = (active || (unstable && up > -lo)) ? T(1) : T(0);
}

// ------------------------------------------------------------------------------- element-wise
template <typename T>
__global__ void centre_radius_kernel(const T* __restrict__ l, const T* __restrict__ u, bool relu, T* __restrict__ c,
                                     T* __restrict__ r, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    T lo = l[i], up = u[i];
    if (relu) {
      lo = lo > T(0) ? lo : T(0);
      up = up > T(0) ? up : T(0);
    }
    c[i] = (up + lo) / 2;
    r[i] = (up - lo) / 2;
  }
}

template <typename T>
__global__ void bounds_from_centre_kernel(T* __restrict__ a, T* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T c = a[i], r = b[i];
    a[i] = c - r;
    b[i] = c + r;
  }
}

template <typename T>
__global__ void centre_radius_grads_kernel(const T* __restrict__ gl, const T* __restrict__ gu, T* __restrict__ gc,
                                           T* __restrict__ gr, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    gc[i] = gl[i] + gu[i];
    gr[i] = gu[i] - gl[i];
  }
}

template <typename T>
__global__ void bounds_grads_kernel(const T* __restrict__ gc, const T* __restrict__ gr, const T* __restrict__ l,
                                    const T* __restrict__ u, bool relu, T* __restrict__ gl, T* __restrict__ gu,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    T a = (gc[i] - gr[i]) / 2, b = (gc[i] + gr[i]) / 2;
    if (relu) {  // clamp_min(0) passes the gradient where x > 0
      a = l[i] > T(0) ? a : T(0);
      b = u[i] > T(0) ? b : T(0);
    }
    gl[i] = a;
    gu[i] = b;
  }
}

// ------------------------------------------------------------------------------- ReLU relaxation
// grid: one block per (row nb, chunk of kThreads positions); bias must be zeroed beforehand.
template <typename T>
__global__ void relax_forward_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up,
                                     const T* __restrict__ cb, int64_t HW, T* __restrict__ z, T* __restrict__ bias,
                                     int64_t M, int64_t B, int64_t K, int64_t S, int64_t chunks) {
  using A = at::acc_type<T, true>;
  __shared__ A red[32];
  const int64_t nb = blockIdx.x / chunks;
  const int64_t s = (blockIdx.x % chunks) * kThreads + threadIdx.x;
  const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
  const bool valid = s < S;
  T pos = 0, neg = 0, icp = 0, cbv = 0;
  if (valid) {
    relax_coeffs(lo[nb * S + s], up[nb * S + s], pos, neg, icp);
    if (cb != nullptr) cbv = cb[s / HW];
  }
  for (int64_t k = 0; k < K; ++k) {
    A part = 0;
    if (valid) {
      const T x = lam[((m * B + b) * K + k) * S + s];
      const T zz = x * (x > T(0) ? pos : neg);
      z[(nb * K + k) * S + s] = zz;
      part = A((x < T(0) ? x : T(0)) * icp) + A(zz) * A(cbv);
    }
    part = block_sum(part, red);
    if (threadIdx.x == 0) atomicAdd(bias + nb * K + k, static_cast<T>(part));
  }
}

// grid: one thread per (task, s), task = sample b (M = 1 < N: Lambda shared by the radii, its
// gradient summed over them by the same thread) or row nb.
template <typename T>
__global__ void relax_backward_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up,
                                      const T* __restrict__ gz, const T* __restrict__ gbias,
                                      const T* __restrict__ cb, int64_t HW, T* __restrict__ glam,
                                      T* __restrict__ glo, T* __restrict__ gup, T* __restrict__ z, int64_t M,
                                      int64_t N, int64_t B, int64_t K, int64_t S, bool shared, int64_t tasks) {
  using A = at::acc_type<T, true>;
  const int64_t total = tasks * S;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t task = i / S, s = i % S;
    const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
    const T cbv = cb != nullptr ? cb[s / HW] : T(0);
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
      const T l = lo[nb * S + s], u = up[nb * S + s];
      T pos, neg, icp;
      relax_coeffs(l, u, pos, neg, icp);
      A gs = 0, gt = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t li = ((m * B + b) * K + k) * S + s, zi = (nb * K + k) * S + s;
        const T x = lam[li];
        const T gb = gbias[nb * K + k];
        const T g = gz[zi] + gb * cbv;
        const T xn = x < T(0) ? x : T(0);
        // lam^+ = clamp_min(lam, 0), lam^- = clamp_max(lam, 0): no gradient passes at lam = 0
        const T r = x > T(0) ? g * pos : (x < T(0) ? g * neg + gb * icp : T(0));
        glam[li] = (shared && n > n0) ? glam[li] + r : r;
        gs += A(g * xn);
        gt += A(gb * xn);
        if (z != nullptr) z[zi] = x * (x > T(0) ? pos : neg);
      }
      // back through slope = u / (u - l) and intercept = -slope * l on unstable neurons
      T g_l = 0, g_u = 0;
      if (l < T(0) && u > T(0)) {
        const A denom = A(u) - A(l);
        const A chord = A(u / (u - l));
        const A g_chord = gs - gt * A(l);
        A al = -gt * chord, au = g_chord / denom;
        const A g_den = -g_chord * A(u) / (denom * denom);
        au += g_den;
        al -= g_den;
        g_l = static_cast<T>(al);
        g_u = static_cast<T>(au);
      }
      glo[nb * S + s] = g_l;
      gup[nb * S + s] = g_u;
    }
  }
}

// ------------------------------------------------------------------------------- concretisation
template <typename T>
__global__ void concretize_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up,
                                  bool relu, T* __restrict__ out, int64_t M, int64_t B, int64_t K, int64_t S,
                                  int64_t chunks) {
  using A = at::acc_type<T, true>;
  __shared__ A red[32];
  const int64_t nb = blockIdx.x / chunks;
  const int64_t s = (blockIdx.x % chunks) * kThreads + threadIdx.x;
  const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
  const bool valid = s < S;
  T l = 0, u = 0;
  if (valid) {
    l = lo[nb * S + s];
    u = up[nb * S + s];
    if (relu) {
      l = l > T(0) ? l : T(0);
      u = u > T(0) ? u : T(0);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    A part = 0;
    if (valid) {
      const T x = lam[((m * B + b) * K + k) * S + s];
      part = A(x * (x >= T(0) ? l : u));
    }
    part = block_sum(part, red);
    if (threadIdx.x == 0) atomicAdd(out + nb * K + k, static_cast<T>(part));
  }
}

template <typename T>
__global__ void concretize_backward_kernel(const T* __restrict__ gout, const T* __restrict__ lam,
                                           const T* __restrict__ lo, const T* __restrict__ up, bool relu,
                                           T* __restrict__ glam, T* __restrict__ glo, T* __restrict__ gup, int64_t M,
                                           int64_t N, int64_t B, int64_t K, int64_t S, bool shared, int64_t tasks) {
  using A = at::acc_type<T, true>;
  const int64_t total = tasks * S;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t task = i / S, s = i % S;
    const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
      const T l0 = lo[nb * S + s], u0 = up[nb * S + s];
      const T l = relu ? (l0 > T(0) ? l0 : T(0)) : l0;
      const T u = relu ? (u0 > T(0) ? u0 : T(0)) : u0;
      const T c = (u + l) / 2, rho = (u - l) / 2;
      A gc = 0, gr = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t li = ((m * B + b) * K + k) * S + s;
        const T x = lam[li];
        const T g = gout[nb * K + k];
        const T sg = x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
        const T r = g * (c - sg * rho);  // d/dlam (lam c - |lam| rho)
        glam[li] = (shared && n > n0) ? glam[li] + r : r;
        gc += A(g * x);
        gr -= A(g * (x < T(0) ? -x : x));
      }
      T a = static_cast<T>((gc - gr) / 2), bb = static_cast<T>((gc + gr) / 2);
      if (relu) {
        a = l0 > T(0) ? a : T(0);
        bb = u0 > T(0) ? bb : T(0);
      }
      glo[nb * S + s] = a;
      gup[nb * S + s] = bb;
    }
  }
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace

// ------------------------------------------------------------------------------- the kernel set
void CudaKernels::centre_radius(const at::Tensor& lower, const at::Tensor& upper, bool relu, const at::Tensor& c,
                                const at::Tensor& rho) {
  for (auto* t : {&lower, &upper, &c, &rho}) check_cuda(*t, "centre_radius operand");
  const int64_t n = lower.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(lower.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(lower.scalar_type(), "gmbound_centre_radius_cuda", [&] {
    centre_radius_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu, c.mutable_data_ptr<scalar_t>(),
        rho.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::bounds_from_centre(const at::Tensor& c_to_lower, const at::Tensor& rho_to_upper) {
  check_cuda(c_to_lower, "centre");
  check_cuda(rho_to_upper, "radius");
  const int64_t n = c_to_lower.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(c_to_lower.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(c_to_lower.scalar_type(), "gmbound_bounds_from_centre_cuda", [&] {
    bounds_from_centre_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        c_to_lower.mutable_data_ptr<scalar_t>(), rho_to_upper.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::centre_radius_grads(const at::Tensor& g_lower, const at::Tensor& g_upper, const at::Tensor& g_c,
                                      const at::Tensor& g_rho) {
  for (auto* t : {&g_lower, &g_upper, &g_c, &g_rho}) check_cuda(*t, "centre_radius_grads operand");
  const int64_t n = g_lower.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(g_lower.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g_lower.scalar_type(), "gmbound_centre_radius_grads_cuda", [&] {
    centre_radius_grads_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        g_lower.const_data_ptr<scalar_t>(), g_upper.const_data_ptr<scalar_t>(), g_c.mutable_data_ptr<scalar_t>(),
        g_rho.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::bounds_grads(const at::Tensor& g_c, const at::Tensor& g_rho, const at::Tensor& lower,
                               const at::Tensor& upper, bool relu, const at::Tensor& g_lower,
                               const at::Tensor& g_upper) {
  for (auto* t : {&g_c, &g_rho, &lower, &upper, &g_lower, &g_upper}) check_cuda(*t, "bounds_grads operand");
  const int64_t n = g_c.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(g_c.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g_c.scalar_type(), "gmbound_bounds_grads_cuda", [&] {
    bounds_grads_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        g_c.const_data_ptr<scalar_t>(), g_rho.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
        upper.const_data_ptr<scalar_t>(), relu, g_lower.mutable_data_ptr<scalar_t>(),
        g_upper.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::relax_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                const at::Tensor& cbias, Geom geom, const at::Tensor& z, const at::Tensor& bias) {
  for (auto* t : {&lam, &lower, &upper, &z, &bias}) check_cuda(*t, "relax_forward operand");
  if (cbias.defined()) check_cuda(cbias, "relax_forward bias");
  TORCH_CHECK(!geom.channels_last, "gmbound CUDA kernels take contiguous (NCHW) blocks");
  const Dims d = lam_dims(lam, lower);
  TORCH_CHECK(!cbias.defined() || geom.C * geom.HW == d.S, "gmbound: relax_forward geometry does not fit");
  bias.zero_();
  if (d.S == 0 || d.K == 0 || d.N * d.B == 0) return;
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (d.S + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_relax_forward_cuda", [&] {
    relax_forward_kernel<scalar_t><<<grid_rows(d.N * d.B * chunks), kThreads, 0, stream>>>(
        lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(cbias), std::max<int64_t>(1, geom.HW), z.mutable_data_ptr<scalar_t>(),
        bias.mutable_data_ptr<scalar_t>(), d.M, d.B, d.K, d.S, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::relax_backward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                 const at::Tensor& g_z, const at::Tensor& g_bias, const at::Tensor& cbias, Geom geom,
                                 const at::Tensor& g_lam, const at::Tensor& g_lower, const at::Tensor& g_upper,
                                 const at::Tensor& z, const at::Tensor& g_cbias) {
  for (auto* t : {&lam, &lower, &upper, &g_z, &g_bias, &g_lam, &g_lower, &g_upper}) {
    check_cuda(*t, "relax_backward operand");
  }
  if (cbias.defined()) check_cuda(cbias, "relax_backward bias");
  TORCH_CHECK(!geom.channels_last, "gmbound CUDA kernels take contiguous (NCHW) blocks");
  const Dims d = lam_dims(lam, lower);
  TORCH_CHECK(!g_cbias.defined() || cbias.defined(), "gmbound: relax_backward: g_cbias needs cbias");
  TORCH_CHECK(!cbias.defined() || geom.C * geom.HW == d.S, "gmbound: relax_backward geometry does not fit");
  // the bias gradient needs z; keep a temporary when the caller does not want z itself
  at::Tensor zbuf = z;
  if (g_cbias.defined() && !zbuf.defined()) zbuf = at::empty(g_z.sizes(), g_z.options());
  if (zbuf.defined()) check_cuda(zbuf, "relax_backward z");
  if (d.S > 0 && d.K > 0 && d.N * d.B > 0) {
    const c10::cuda::CUDAGuard guard(lam.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const bool shared = d.M == 1 && d.N > 1;
    const int64_t tasks = shared ? d.B : d.N * d.B;
    AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_relax_backward_cuda", [&] {
      relax_backward_kernel<scalar_t><<<blocks_for(tasks * d.S), kThreads, 0, stream>>>(
          lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(),
          g_z.const_data_ptr<scalar_t>(), g_bias.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(cbias),
          std::max<int64_t>(1, geom.HW), g_lam.mutable_data_ptr<scalar_t>(), g_lower.mutable_data_ptr<scalar_t>(),
          g_upper.mutable_data_ptr<scalar_t>(), mut_or_null<scalar_t>(zbuf), d.M, d.N, d.B, d.K, d.S, shared,
          tasks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    g_lam.zero_();
    g_lower.zero_();
    g_upper.zero_();
  }
  if (g_cbias.defined()) {
    // d bias / d cbias[c] = sum over rows of g_bias * (sum of z over the channel's positions)
    at::Tensor per_channel = zbuf.view({d.N * d.B * d.K, geom.C, std::max<int64_t>(1, geom.HW)}).sum(-1);
    g_cbias.copy_(at::matmul(g_bias.reshape({-1}), per_channel));
  }
}

void CudaKernels::concretize_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                     bool relu, const at::Tensor& out) {
  for (auto* t : {&lam, &lower, &upper, &out}) check_cuda(*t, "concretize operand");
  const Dims d = lam_dims(lam, lower);
  out.zero_();
  if (d.S == 0 || d.K == 0 || d.N * d.B == 0) return;
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (d.S + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_concretize_cuda", [&] {
    concretize_kernel<scalar_t><<<grid_rows(d.N * d.B * chunks), kThreads, 0, stream>>>(
        lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu,
        out.mutable_data_ptr<scalar_t>(), d.M, d.B, d.K, d.S, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void CudaKernels::concretize_backward(const at::Tensor& g_out, const at::Tensor& lam, const at::Tensor& lower,
                                      const at::Tensor& upper, bool relu, const at::Tensor& g_lam,
                                      const at::Tensor& g_lower, const at::Tensor& g_upper) {
  for (auto* t : {&g_out, &lam, &lower, &upper, &g_lam, &g_lower, &g_upper}) {
    check_cuda(*t, "concretize_backward operand");
  }
  const Dims d = lam_dims(lam, lower);
  if (d.S == 0 || d.K == 0 || d.N * d.B == 0) {
    g_lam.zero_();
    g_lower.zero_();
    g_upper.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool shared = d.M == 1 && d.N > 1;
  const int64_t tasks = shared ? d.B : d.N * d.B;
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_concretize_backward_cuda", [&] {
    concretize_backward_kernel<scalar_t><<<blocks_for(tasks * d.S), kThreads, 0, stream>>>(
        g_out.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
        upper.const_data_ptr<scalar_t>(), relu, g_lam.mutable_data_ptr<scalar_t>(),
        g_lower.mutable_data_ptr<scalar_t>(), g_upper.mutable_data_ptr<scalar_t>(), d.M, d.N, d.B, d.K, d.S, shared,
        tasks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

TORCH_LIBRARY_IMPL(gmbound, CUDA, m) { register_ops<CudaKernels>(m); }

}  // namespace gmbound
