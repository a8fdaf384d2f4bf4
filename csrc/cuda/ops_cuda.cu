// CUDA kernels. Layout on CUDA: plain contiguous (per-sample blocks of S elements, channel c of
// position s is s / HW). Products (matmul, convolution) go through ATen (cuBLAS / cuDNN) in
// composite.h; these kernels do the element-wise and reduction work around them in one pass each.
// The per-element formulas are bound_math.h's, the very ones the CPU kernels run.
//
// Threads run over the S positions of one (radius, sample) row and loop over the K specification
// rows, so the ReLU coefficients of a neuron are computed once for all K rows, and reductions over K
// (gradients of the bounds) stay in registers.
//
// Numerics and determinism: sums accumulate in double, as on the CPU. Reductions over S (bias
// terms, the concretised bound) run in a fixed order: each block reduces its chunk of S with a
// fixed shuffle tree and writes the partial sum to its own slot; a second kernel adds a row's
// chunks in order. No atomics, so every result is the same from run to run (and
// torch.use_deterministic_algorithms(True) holds for these kernels).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bound_math.h"
#include "composite.h"
#include "kernel_helpers.h"

namespace gmbound {
namespace {

constexpr int kThreads = 256;
// block_sum reduces whole warps, then the per-warp sums in warp 0 (at most 32 of them).
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum needs whole warps, at most 32 of them");

// The accumulation type: double for float and double (at::acc_type's CPU choice), on the GPU too.
template <typename T>
using acc_t = at::acc_type<T, /*is_cuda=*/false>;

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "gmbound CUDA kernel: ", what, " is on ", t.device());
  TORCH_CHECK(t.is_contiguous(), "gmbound CUDA kernel: ", what, " is not contiguous");
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

#define GMBOUND_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// Sum of v over the block (blockDim.x == kThreads) in a fixed order; the result is valid in thread
// 0. Every thread of the block must call it.
template <typename A>
__device__ A block_sum(A v, A* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (kThreads >> 5) ? shared[lane] : A(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  __syncthreads();  // shared may be reused by the next call
  return v;
}

// A row's chunk sum: straight to out[row] when the row is one chunk, else to its slot in partial.
template <typename T, typename A>
__device__ __forceinline__ void store_chunk_sum(A v, int64_t row, int64_t chunk, int64_t chunks, T* out, A* partial) {
  if (threadIdx.x != 0) return;
  if (chunks == 1) {
    out[row] = static_cast<T>(v);
  } else {
    partial[row * chunks + chunk] = v;
  }
}

// out[row] = sum of partial[row, 0..chunks) in order.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    sum_chunks_kernel(const A* __restrict__ partial, int64_t rows, int64_t chunks, T* __restrict__ out) {
  GMBOUND_GRID_STRIDE(r, rows) {
    A acc = 0;
    for (int64_t c = 0; c < chunks; ++c) acc += partial[r * chunks + c];
    out[r] = static_cast<T>(acc);
  }
}

// ------------------------------------------------------------------------------- element-wise
template <typename T>
__global__ void __launch_bounds__(kThreads)
    centre_radius_kernel(const T* __restrict__ l, const T* __restrict__ u, bool relu, T* __restrict__ c,
                         T* __restrict__ r, int64_t n) {
  GMBOUND_GRID_STRIDE(i, n) { math::centre_radius(l[i], u[i], relu, c[i], r[i]); }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bounds_from_centre_kernel(T* __restrict__ a, T* __restrict__ b, int64_t n) {
  GMBOUND_GRID_STRIDE(i, n) {
    const T c = a[i], r = b[i];
    a[i] = c - r;
    b[i] = c + r;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    centre_radius_grads_kernel(const T* __restrict__ gl, const T* __restrict__ gu, T* __restrict__ gc,
                               T* __restrict__ gr, int64_t n) {
  GMBOUND_GRID_STRIDE(i, n) {
    gc[i] = gl[i] + gu[i];
    gr[i] = gu[i] - gl[i];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bounds_grads_kernel(const T* __restrict__ gc, const T* __restrict__ gr, const T* __restrict__ l,
                        const T* __restrict__ u, bool relu, T* __restrict__ gl, T* __restrict__ gu, int64_t n) {
  GMBOUND_GRID_STRIDE(i, n) { math::centre_radius_to_bound_grads(gc[i], gr[i], l[i], u[i], relu, gl[i], gu[i]); }
}

// One grid-stride element-wise launch over n elements of `like`'s device, on the current stream.
template <typename... Params, typename... Args>
void launch_elementwise(void (*kernel)(Params...), const at::Tensor& like, int64_t n, Args&&... args) {
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(like.device());
  kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)..., n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------- ReLU relaxation
// grid: one block per (row nb, chunk of kThreads positions); see store_chunk_sum for the bias.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    relax_forward_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up,
                         const T* __restrict__ cb, int64_t HW, T a, T* __restrict__ z, T* __restrict__ bias,
                         acc_t<T>* __restrict__ partial, int64_t M, int64_t B, int64_t K, int64_t S, int64_t chunks) {
  using A = acc_t<T>;
  __shared__ A red[32];
  const int64_t nb = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t s = chunk * kThreads + threadIdx.x;
  const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
  const bool valid = s < S;
  T pos = 0, neg = 0, icp = 0, cbv = 0;
  if (valid) {
    math::relu_relaxation(lo[nb * S + s], up[nb * S + s], a, pos, neg, icp);
    if (cb != nullptr) cbv = cb[s / HW];
  }
  for (int64_t k = 0; k < K; ++k) {
    A part = 0;
    if (valid) {
      const T x = lam[((m * B + b) * K + k) * S + s];
      const T zz = math::relaxed_lam(x, pos, neg);
      z[(nb * K + k) * S + s] = zz;
      part = A(math::neg_part(x) * icp) + A(zz) * A(cbv);
    }
    part = block_sum(part, red);
    store_chunk_sum(part, nb * K + k, chunk, chunks, bias, partial);
  }
}

// grid: one thread per (task, s), task = sample b (M = 1 < N: Lambda shared by the radii, its
// gradient summed over them by the same thread) or row nb.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    relax_backward_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up,
                          const T* __restrict__ gz, const T* __restrict__ gbias, const T* __restrict__ cb, int64_t HW,
                          T a, T* __restrict__ glam, T* __restrict__ glo, T* __restrict__ gup, T* __restrict__ z, int64_t M,
                          int64_t N, int64_t B, int64_t K, int64_t S, bool shared, int64_t tasks) {
  using A = acc_t<T>;
  GMBOUND_GRID_STRIDE(i, tasks * S) {
    const int64_t task = i / S, s = i % S;
    const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
    const T cbv = cb != nullptr ? cb[s / HW] : T(0);
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
      const T l = lo[nb * S + s], u = up[nb * S + s];
      T pos, neg, icp;
      math::relu_relaxation(l, u, a, pos, neg, icp);
      A gs = 0, gt = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t li = ((m * B + b) * K + k) * S + s, zi = (nb * K + k) * S + s;
        const T x = lam[li];
        const T gb = gbias[nb * K + k];
        const T g = gz[zi] + gb * cbv;  // the gradient reaching z: from the product, plus g_bias * bias
        const T xn = math::neg_part(x);
        const T r = math::relaxed_lam_grad(x, g, gb, pos, neg, icp);
        glam[li] = (shared && n > n0) ? glam[li] + r : r;
        gs += A(g * xn);
        gt += A(gb * xn);
        if (z != nullptr) z[zi] = math::relaxed_lam(x, pos, neg);
      }
      math::relu_relaxation_grads(l, u, A(1) - A(a), gs, gt, glo[nb * S + s], gup[nb * S + s]);
    }
  }
}

// ------------------------------------------------------------------------------- concretisation
template <typename T>
__global__ void __launch_bounds__(kThreads)
    concretize_kernel(const T* __restrict__ lam, const T* __restrict__ lo, const T* __restrict__ up, bool relu,
                      T* __restrict__ out, acc_t<T>* __restrict__ partial, int64_t M, int64_t B, int64_t K, int64_t S,
                      int64_t chunks) {
  using A = acc_t<T>;
  __shared__ A red[32];
  const int64_t nb = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t s = chunk * kThreads + threadIdx.x;
  const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
  const bool valid = s < S;
  T l = 0, u = 0;
  if (valid) {
    l = lo[nb * S + s];
    u = up[nb * S + s];
    if (relu) {
      l = math::relu(l);
      u = math::relu(u);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    A part = 0;
    if (valid) part = A(math::concretize_term(lam[((m * B + b) * K + k) * S + s], l, u));
    part = block_sum(part, red);
    store_chunk_sum(part, nb * K + k, chunk, chunks, out, partial);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    concretize_backward_kernel(const T* __restrict__ gout, const T* __restrict__ lam, const T* __restrict__ lo,
                               const T* __restrict__ up, bool relu, T* __restrict__ glam, T* __restrict__ glo,
                               T* __restrict__ gup, int64_t M, int64_t N, int64_t B, int64_t K, int64_t S, bool shared,
                               int64_t tasks) {
  using A = acc_t<T>;
  GMBOUND_GRID_STRIDE(i, tasks * S) {
    const int64_t task = i / S, s = i % S;
    const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
      const T l0 = lo[nb * S + s], u0 = up[nb * S + s];
      T c, rho;
      math::centre_radius(l0, u0, relu, c, rho);
      A gc = 0, gr = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t li = ((m * B + b) * K + k) * S + s;
        const T x = lam[li];
        const T g = gout[nb * K + k];
        const T r = math::concretize_lam_grad(g, x, c, rho);
        glam[li] = (shared && n > n0) ? glam[li] + r : r;
        gc += A(g * x);
        gr -= A(g * (x < T(0) ? -x : x));
      }
      // back through c = (u + l) / 2, rho = (u - l) / 2 (the sums are in double)
      T a = static_cast<T>((gc - gr) / 2), bb = static_cast<T>((gc + gr) / 2);
      if (relu) {
        a = math::relu_grad(l0, a);
        bb = math::relu_grad(u0, bb);
      }
      glo[nb * S + s] = a;
      gup[nb * S + s] = bb;
    }
  }
}

// Scratch for the chunk partial sums of rows x chunks (undefined when every row is one chunk).
at::Tensor chunk_partials(int64_t rows, int64_t chunks, const at::Tensor& like) {
  if (chunks <= 1) return at::Tensor();
  return at::empty({rows * chunks}, like.options().dtype(at::kDouble));
}

}  // namespace

// ------------------------------------------------------------------------------- the kernel set
void CudaKernels::centre_radius(const at::Tensor& lower, const at::Tensor& upper, bool relu, const at::Tensor& c,
                                const at::Tensor& rho) {
  for (auto* t : {&lower, &upper, &c, &rho}) check_cuda(*t, "centre_radius operand");
  AT_DISPATCH_FLOATING_TYPES(lower.scalar_type(), "gmbound_centre_radius_cuda", [&] {
    launch_elementwise(centre_radius_kernel<scalar_t>, lower, lower.numel(), lower.const_data_ptr<scalar_t>(),
                       upper.const_data_ptr<scalar_t>(), relu, c.mutable_data_ptr<scalar_t>(),
                       rho.mutable_data_ptr<scalar_t>());
  });
}

void CudaKernels::bounds_from_centre(const at::Tensor& c_to_lower, const at::Tensor& rho_to_upper) {
  check_cuda(c_to_lower, "centre");
  check_cuda(rho_to_upper, "radius");
  AT_DISPATCH_FLOATING_TYPES(c_to_lower.scalar_type(), "gmbound_bounds_from_centre_cuda", [&] {
    launch_elementwise(bounds_from_centre_kernel<scalar_t>, c_to_lower, c_to_lower.numel(),
                       c_to_lower.mutable_data_ptr<scalar_t>(), rho_to_upper.mutable_data_ptr<scalar_t>());
  });
}

void CudaKernels::centre_radius_grads(const at::Tensor& g_lower, const at::Tensor& g_upper, const at::Tensor& g_c,
                                      const at::Tensor& g_rho) {
  for (auto* t : {&g_lower, &g_upper, &g_c, &g_rho}) check_cuda(*t, "centre_radius_grads operand");
  AT_DISPATCH_FLOATING_TYPES(g_lower.scalar_type(), "gmbound_centre_radius_grads_cuda", [&] {
    launch_elementwise(centre_radius_grads_kernel<scalar_t>, g_lower, g_lower.numel(),
                       g_lower.const_data_ptr<scalar_t>(), g_upper.const_data_ptr<scalar_t>(),
                       g_c.mutable_data_ptr<scalar_t>(), g_rho.mutable_data_ptr<scalar_t>());
  });
}

void CudaKernels::bounds_grads(const at::Tensor& g_c, const at::Tensor& g_rho, const at::Tensor& lower,
                               const at::Tensor& upper, bool relu, const at::Tensor& g_lower,
                               const at::Tensor& g_upper) {
  for (auto* t : {&g_c, &g_rho, &lower, &upper, &g_lower, &g_upper}) check_cuda(*t, "bounds_grads operand");
  AT_DISPATCH_FLOATING_TYPES(g_c.scalar_type(), "gmbound_bounds_grads_cuda", [&] {
    launch_elementwise(bounds_grads_kernel<scalar_t>, g_c, g_c.numel(), g_c.const_data_ptr<scalar_t>(),
                       g_rho.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
                       upper.const_data_ptr<scalar_t>(), relu, g_lower.mutable_data_ptr<scalar_t>(),
                       g_upper.mutable_data_ptr<scalar_t>());
  });
}

void CudaKernels::relax_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                const at::Tensor& cbias, Geom geom, double negative_slope, const at::Tensor& z,
                                const at::Tensor& bias) {
  for (auto* t : {&lam, &lower, &upper, &z, &bias}) check_cuda(*t, "relax_forward operand");
  if (cbias.defined()) check_cuda(cbias, "relax_forward bias");
  TORCH_CHECK(!geom.channels_last, "gmbound CUDA kernels take contiguous (NCHW) blocks");
  const Dims d = lam_dims(lam, lower);
  TORCH_CHECK(!cbias.defined() || geom.C * geom.HW == d.S, "gmbound: relax_forward geometry does not fit");
  if (d.S == 0 || d.K == 0 || d.N * d.B == 0) {
    bias.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (d.S + kThreads - 1) / kThreads, rows = d.N * d.B * d.K;
  at::Tensor partial = chunk_partials(rows, chunks, lam);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_relax_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    relax_forward_kernel<scalar_t><<<grid_rows(d.N * d.B * chunks), kThreads, 0, stream>>>(
        lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(cbias), std::max<int64_t>(1, geom.HW), static_cast<scalar_t>(negative_slope),
        z.mutable_data_ptr<scalar_t>(),
        bias.mutable_data_ptr<scalar_t>(), mut_or_null<A>(partial), d.M, d.B, d.K, d.S, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (chunks > 1) {
      sum_chunks_kernel<scalar_t, A><<<blocks_for(rows), kThreads, 0, stream>>>(
          partial.const_data_ptr<A>(), rows, chunks, bias.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void CudaKernels::relax_backward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                 const at::Tensor& g_z, const at::Tensor& g_bias, const at::Tensor& cbias, Geom geom,
                                 double negative_slope, const at::Tensor& g_lam, const at::Tensor& g_lower,
                                 const at::Tensor& g_upper, const at::Tensor& z, const at::Tensor& g_cbias) {
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
          std::max<int64_t>(1, geom.HW), static_cast<scalar_t>(negative_slope), g_lam.mutable_data_ptr<scalar_t>(), g_lower.mutable_data_ptr<scalar_t>(),
          g_upper.mutable_data_ptr<scalar_t>(), mut_or_null<scalar_t>(zbuf), d.M, d.N, d.B, d.K, d.S, shared,
          tasks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    g_lam.zero_();
    g_lower.zero_();
    g_upper.zero_();
    if (zbuf.defined()) zbuf.zero_();
  }
  if (g_cbias.defined()) {
    // d bias / d cbias[c] = sum over rows of g_bias * (sum of z over the channel's positions), in
    // double as on the CPU (ATen's deterministic reductions and product)
    at::Tensor per_channel =
        zbuf.view({d.N * d.B * d.K, geom.C, std::max<int64_t>(1, geom.HW)}).sum(-1, false, at::kDouble);
    g_cbias.copy_(at::matmul(g_bias.reshape({-1}).to(at::kDouble), per_channel));
  }
}

void CudaKernels::concretize_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                     bool relu, const at::Tensor& out) {
  for (auto* t : {&lam, &lower, &upper, &out}) check_cuda(*t, "concretize operand");
  const Dims d = lam_dims(lam, lower);
  if (d.S == 0 || d.K == 0 || d.N * d.B == 0) {
    out.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(lam.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (d.S + kThreads - 1) / kThreads, rows = d.N * d.B * d.K;
  at::Tensor partial = chunk_partials(rows, chunks, lam);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_concretize_cuda", [&] {
    using A = acc_t<scalar_t>;
    concretize_kernel<scalar_t><<<grid_rows(d.N * d.B * chunks), kThreads, 0, stream>>>(
        lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu,
        out.mutable_data_ptr<scalar_t>(), mut_or_null<A>(partial), d.M, d.B, d.K, d.S, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (chunks > 1) {
      sum_chunks_kernel<scalar_t, A><<<blocks_for(rows), kThreads, 0, stream>>>(
          partial.const_data_ptr<A>(), rows, chunks, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
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
