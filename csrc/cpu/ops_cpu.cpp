// CPU kernels: one pass each over the bound / Lambda blocks, parallel over (radius, sample) rows
// with at::parallel_for (torch's OpenMP pool). Sums accumulate in at::acc_type (double for float).
// The loops live in templates outside the AT_DISPATCH macro so `#pragma omp simd` applies.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "bound_math.h"
#include "composite.h"
#include "kernel_helpers.h"

namespace gmbound {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task of the purely element-wise loops

// Rows per task so that a task has at least ~kGrain elements of work: small problems stay on one
// thread (an OpenMP region costs more than they do), large ones spread over all threads.
int64_t row_grain(int64_t work_per_row) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work_per_row)); }

void check_dense(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "gmbound CPU kernel: ", what, " is on ", t.device());
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "gmbound CPU kernel: ", what, " is not dense");
}

// ------------------------------------------------------------------------------- element-wise
template <typename T>
void centre_radius_impl(const T* l, const T* u, bool relu, T* c, T* r, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (relu) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) math::centre_radius(l[i], u[i], true, c[i], r[i]);
    } else {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) math::centre_radius(l[i], u[i], false, c[i], r[i]);
    }
  });
}

template <typename T>
void bounds_from_centre_impl(T* a, T* b, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const T c = a[i], r = b[i];
      a[i] = c - r;
      b[i] = c + r;
    }
  });
}

template <typename T>
void centre_radius_grads_impl(const T* gl, const T* gu, T* gc, T* gr, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      gc[i] = gl[i] + gu[i];
      gr[i] = gu[i] - gl[i];
    }
  });
}

template <typename T>
void bounds_grads_impl(const T* gc, const T* gr, const T* l, const T* u, bool relu, T* gl, T* gu, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      math::centre_radius_to_bound_grads(gc[i], gr[i], l[i], u[i], relu, gl[i], gu[i]);
    }
  });
}

// ------------------------------------------------------------------------------- ReLU relaxation
// Coefficients of one block (bound_math.h) for negative slope a (0: ReLU): pos = alpha (lower
// line), neg = s (upper slope), icp = t (upper intercept).
template <typename T>
inline void relax_coeffs(const T* l, const T* u, T a, int64_t S, T* pos, T* neg, T* icp) {
  for (int64_t s = 0; s < S; ++s) math::relu_relaxation(l[s], u[s], a, pos[s], neg[s], icp[s]);
}

// Gradients of (slope, intercept) of one block back to (lower, upper).
template <typename T, typename A>
inline void relax_coeff_grads(const T* l, const T* u, T a, const A* gs, const A* gt, int64_t S, T* gl, T* gu) {
  const A keep = A(1) - A(a);
  for (int64_t s = 0; s < S; ++s) math::relu_relaxation_grads(l[s], u[s], keep, gs[s], gt[s], gl[s], gu[s]);
}

// The affine layer's bias spread over the block's positions, bias[channel(s)] for every s, so
// relax_backward adds g_bias * bias to the gradient reaching z in its main pass.
template <typename T>
std::vector<T> bias_per_position(const T* cb, Geom geom) {
  std::vector<T> out(cb != nullptr ? geom.C * geom.HW : 0);
  if (cb == nullptr) return out;
  for (int64_t c = 0; c < geom.C; ++c) {
    for (int64_t hw = 0; hw < geom.HW; ++hw) out[geom.channels_last ? hw * geom.C + c : c * geom.HW + hw] = cb[c];
  }
  return out;
}

template <typename T>
void relax_forward_impl(const T* lp, const T* lo, const T* up, const T* cb, Geom geom, T a, T* zp, T* bp,
                        const Dims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t S = d.S, K = d.K, B = d.B, M = d.M, C = geom.C, HW = geom.HW;
  at::parallel_for(0, d.N * d.B, row_grain(K * S), [&](int64_t begin, int64_t end) {
    std::vector<T> coef(3 * S);
    T* pos = coef.data();
    T* neg = pos + S;
    T* icp = neg + S;
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
      relax_coeffs(lo + nb * S, up + nb * S, a, S, pos, neg, icp);
      for (int64_t k = 0; k < K; ++k) {
        const T* v = lp + ((m * B + b) * K + k) * S;
        T* zo = zp + (nb * K + k) * S;
        acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t s = 0; s < S; ++s) {  // branch-free so it vectorises
          const T x = v[s];
          zo[s] = math::relaxed_lam(x, pos[s], neg[s]);
          acc += acc_t(math::neg_part(x) * icp[s]);
        }
        if (cb != nullptr) {  // + z . bias of the affine layer below, channel by channel
          acc_t acc_b = 0;
          if (geom.channels_last) {
            for (int64_t hw = 0; hw < HW; ++hw) {
              const T* zr = zo + hw * C;
#pragma omp simd reduction(+ : acc_b)
              for (int64_t c = 0; c < C; ++c) acc_b += acc_t(zr[c]) * acc_t(cb[c]);
            }
          } else {
            for (int64_t c = 0; c < C; ++c) {
              const T* zr = zo + c * HW;
              acc_t sum_c = 0;
#pragma omp simd reduction(+ : sum_c)
              for (int64_t hw = 0; hw < HW; ++hw) sum_c += acc_t(zr[hw]);
              acc_b += sum_c * acc_t(cb[c]);
            }
          }
          acc += acc_b;
        }
        bp[nb * K + k] = static_cast<T>(acc);
      }
    }
  });
}

// Positions per block of relax_backward: the block's coefficients and its (double) gradient
// accumulators, ~40 bytes a position, stay in L1 while the K rows of Lambda stream past.
constexpr int64_t kRelaxBlock = 512;

template <typename T>
void relax_backward_impl(const T* lp, const T* lo, const T* up, const T* gzp, const T* gbp, const T* cb, Geom geom,
                         T a, T* glam, T* glo, T* gup, T* zp, T* gcb_out, const Dims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t S = d.S, K = d.K, B = d.B, M = d.M, N = d.N, C = geom.C, HW = geom.HW;
  const bool cl = geom.channels_last;
  // Lambda shared by all radii (M = 1 < N): its gradient sums over the radii, so one task per
  // sample then, and no two tasks write the same row.
  const bool shared = M == 1 && N > 1;
  const int64_t tasks = shared ? B : N * B;
  const std::vector<T> cb_pos = bias_per_position(cb, geom);
  // The bias gradient: each task's partial sums in its own row, added up in task order afterwards,
  // so the result does not depend on how the tasks were spread over the threads (deterministic).
  std::vector<acc_t> gcb_rows(gcb_out ? tasks * C : 0, acc_t(0));
  at::parallel_for(0, tasks, row_grain((shared ? N : 1) * K * S), [&](int64_t begin, int64_t end) {
    std::vector<T> coef(3 * kRelaxBlock);
    T* pos = coef.data();
    T* neg = pos + kRelaxBlock;
    T* icp = neg + kRelaxBlock;
    std::vector<acc_t> acc(2 * kRelaxBlock + (gcb_out ? S : 0));
    acc_t* gs = acc.data();
    acc_t* gt = gs + kRelaxBlock;
    acc_t* gzb = gcb_out ? gt + kRelaxBlock : nullptr;  // sum over k of g_bias * z, per position (bias gradient)
    // One row of one block: the gradient reaching z is g (from the product below) plus g_bias times
    // the bias of its channel; lam^+ = clamp_min(lam, 0) and lam^- = clamp_max(lam, 0) pass no
    // gradient at lam = 0.
    auto step = [&](const T* v, const T* g, const T* cbp, T gb, T* gl, int64_t SB, auto accumulate, auto with_bias) {
#pragma omp simd
      for (int64_t s = 0; s < SB; ++s) {
        const T x = v[s];
        T gg = g[s];
        if constexpr (decltype(with_bias)::value) gg += gb * cbp[s];
        const T xn = math::neg_part(x);
        const T r = math::relaxed_lam_grad(x, gg, gb, pos[s], neg[s], icp[s]);
        if constexpr (decltype(accumulate)::value) {
          gl[s] += r;
        } else {
          gl[s] = r;
        }
        gs[s] += acc_t(gg * xn);
        gt[s] += acc_t(gb * xn);
      }
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
        const bool accumulate = shared && n > 0;
        if (gzb != nullptr) std::fill(gzb, gzb + S, acc_t(0));
        for (int64_t s0 = 0; s0 < S; s0 += kRelaxBlock) {
          const int64_t SB = std::min(kRelaxBlock, S - s0);
          relax_coeffs(lo + nb * S + s0, up + nb * S + s0, a, SB, pos, neg, icp);
          std::fill(gs, gs + 2 * kRelaxBlock, acc_t(0));
          const T* cbp = cb != nullptr ? cb_pos.data() + s0 : nullptr;
          for (int64_t k = 0; k < K; ++k) {
            const T* v = lp + ((m * B + b) * K + k) * S + s0;
            const T* g = gzp + (nb * K + k) * S + s0;
            T* gl = glam + ((m * B + b) * K + k) * S + s0;
            const T gb = gbp[nb * K + k];
            if (accumulate) {
              cb != nullptr ? step(v, g, cbp, gb, gl, SB, std::true_type{}, std::true_type{})
                            : step(v, g, cbp, gb, gl, SB, std::true_type{}, std::false_type{});
            } else {
              cb != nullptr ? step(v, g, cbp, gb, gl, SB, std::false_type{}, std::true_type{})
                            : step(v, g, cbp, gb, gl, SB, std::false_type{}, std::false_type{});
            }
            if (zp != nullptr) {  // z itself (for the weight gradient) and g_bias * z (bias gradient)
              T* zo = zp + (nb * K + k) * S + s0;
              if (gzb != nullptr) {
                acc_t* gzbb = gzb + s0;
#pragma omp simd
                for (int64_t s = 0; s < SB; ++s) {
                  zo[s] = math::relaxed_lam(v[s], pos[s], neg[s]);
                  gzbb[s] += acc_t(gb * zo[s]);
                }
              } else {
#pragma omp simd
                for (int64_t s = 0; s < SB; ++s) zo[s] = math::relaxed_lam(v[s], pos[s], neg[s]);
              }
            } else if (gzb != nullptr) {
              acc_t* gzbb = gzb + s0;
#pragma omp simd
              for (int64_t s = 0; s < SB; ++s) gzbb[s] += acc_t(gb * math::relaxed_lam(v[s], pos[s], neg[s]));
            }
          }
          relax_coeff_grads(lo + nb * S + s0, up + nb * S + s0, a, gs, gt, SB, glo + nb * S + s0, gup + nb * S + s0);
        }
        if (gzb != nullptr) {  // this (radius, sample)'s bias gradient: the positions of each channel
          acc_t* gcbl = gcb_rows.data() + task * C;
          if (cl) {
            for (int64_t hw = 0; hw < HW; ++hw) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) gcbl[c] += gzb[hw * C + c];
            }
          } else {
            for (int64_t c = 0; c < C; ++c) {
              acc_t sum_c = 0;
#pragma omp simd reduction(+ : sum_c)
              for (int64_t hw = 0; hw < HW; ++hw) sum_c += gzb[c * HW + hw];
              gcbl[c] += sum_c;
            }
          }
        }
      }
    }
  });
  if (gcb_out != nullptr) {
    for (int64_t c = 0; c < C; ++c) {
      acc_t total = 0;
      for (int64_t task = 0; task < tasks; ++task) total += gcb_rows[task * C + c];
      gcb_out[c] = static_cast<T>(total);
    }
  }
}

// ------------------------------------------------------------------------------- concretisation
template <typename T>
void concretize_impl(const T* lp, const T* lo, const T* up, bool relu, T* op, const Dims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t S = d.S, K = d.K, B = d.B, M = d.M;
  at::parallel_for(0, d.N * d.B, row_grain(K * S), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(relu ? 2 * S : 0);
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n = nb / B, b = nb % B, m = M == 1 ? 0 : n;
      const T* l = lo + nb * S;
      const T* u = up + nb * S;
      if (relu) {
        for (int64_t s = 0; s < S; ++s) {
          buf[s] = math::relu(l[s]);
          buf[S + s] = math::relu(u[s]);
        }
        l = buf.data();
        u = buf.data() + S;
      }
      for (int64_t k = 0; k < K; ++k) {
        const T* v = lp + ((m * B + b) * K + k) * S;
        acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t s = 0; s < S; ++s) {
          acc += acc_t(math::concretize_term(v[s], l[s], u[s]));
        }
        op[nb * K + k] = static_cast<T>(acc);
      }
    }
  });
}

template <typename T>
void concretize_backward_impl(const T* gop, const T* lp, const T* lo, const T* up, bool relu, T* glam, T* glo,
                              T* gup, const Dims& d) {
  using acc_t = at::acc_type<T, false>;
  const int64_t S = d.S, K = d.K, B = d.B, M = d.M, N = d.N;
  const bool shared = M == 1 && N > 1;
  at::parallel_for(0, shared ? B : N * B, row_grain((shared ? N : 1) * K * S), [&](int64_t begin, int64_t end) {
    std::vector<T> cr(2 * S);
    T* c = cr.data();
    T* rho = c + S;
    std::vector<acc_t> acc(2 * S);
    acc_t* gc = acc.data();
    acc_t* gr = gc + S;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = shared ? 0 : task / B, n1 = shared ? N : n0 + 1, b = shared ? task : task % B;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t nb = n * B + b, m = M == 1 ? 0 : n;
        const bool accumulate = shared && n > 0;
        const T* l = lo + nb * S;
        const T* u = up + nb * S;
        for (int64_t s = 0; s < S; ++s) {
          math::centre_radius(l[s], u[s], relu, c[s], rho[s]);
        }
        std::fill(gc, gc + 2 * S, acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const T* v = lp + ((m * B + b) * K + k) * S;
          T* gl = glam + ((m * B + b) * K + k) * S;
          const T g = gop[nb * K + k];
          auto step = [&](auto accumulate) {
#pragma omp simd
            for (int64_t s = 0; s < S; ++s) {
              const T x = v[s];
              const T r = math::concretize_lam_grad(g, x, c[s], rho[s]);
              if constexpr (decltype(accumulate)::value) {
                gl[s] += r;
              } else {
                gl[s] = r;
              }
              gc[s] += acc_t(g * x);
              gr[s] -= acc_t(g * (x < T(0) ? -x : x));
            }
          };
          if (accumulate) {
            step(std::true_type{});
          } else {
            step(std::false_type{});
          }
        }
        T* glr = glo + nb * S;
        T* gur = gup + nb * S;
        for (int64_t s = 0; s < S; ++s) {
          // back through c = (u + l) / 2, rho = (u - l) / 2 (the sums are in double)
          T a = static_cast<T>((gc[s] - gr[s]) / 2), bb = static_cast<T>((gc[s] + gr[s]) / 2);
          if (relu) {
            a = math::relu_grad(l[s], a);
            bb = math::relu_grad(u[s], bb);
          }
          glr[s] = a;
          gur[s] = bb;
        }
      }
    }
  });
}

}  // namespace

// ------------------------------------------------------------------------------- the kernel set
void CpuKernels::centre_radius(const at::Tensor& lower, const at::Tensor& upper, bool relu, const at::Tensor& c,
                               const at::Tensor& rho) {
  for (auto* t : {&lower, &upper, &c, &rho}) check_dense(*t, "centre_radius operand");
  AT_DISPATCH_FLOATING_TYPES(lower.scalar_type(), "gmbound_centre_radius_cpu", [&] {
    centre_radius_impl<scalar_t>(lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu,
                                 c.mutable_data_ptr<scalar_t>(), rho.mutable_data_ptr<scalar_t>(), lower.numel());
  });
}

void CpuKernels::bounds_from_centre(const at::Tensor& c_to_lower, const at::Tensor& rho_to_upper) {
  check_dense(c_to_lower, "centre");
  check_dense(rho_to_upper, "radius");
  TORCH_CHECK(same_significant_strides(c_to_lower, rho_to_upper), "gmbound: centre and radius layouts differ");
  AT_DISPATCH_FLOATING_TYPES(c_to_lower.scalar_type(), "gmbound_bounds_from_centre_cpu", [&] {
    bounds_from_centre_impl<scalar_t>(c_to_lower.mutable_data_ptr<scalar_t>(),
                                      rho_to_upper.mutable_data_ptr<scalar_t>(), c_to_lower.numel());
  });
}

void CpuKernels::centre_radius_grads(const at::Tensor& g_lower, const at::Tensor& g_upper, const at::Tensor& g_c,
                                     const at::Tensor& g_rho) {
  for (auto* t : {&g_lower, &g_upper, &g_c, &g_rho}) check_dense(*t, "centre_radius_grads operand");
  AT_DISPATCH_FLOATING_TYPES(g_lower.scalar_type(), "gmbound_centre_radius_grads_cpu", [&] {
    centre_radius_grads_impl<scalar_t>(g_lower.const_data_ptr<scalar_t>(), g_upper.const_data_ptr<scalar_t>(),
                                       g_c.mutable_data_ptr<scalar_t>(), g_rho.mutable_data_ptr<scalar_t>(),
                                       g_lower.numel());
  });
}

void CpuKernels::bounds_grads(const at::Tensor& g_c, const at::Tensor& g_rho, const at::Tensor& lower,
                              const at::Tensor& upper, bool relu, const at::Tensor& g_lower,
                              const at::Tensor& g_upper) {
  for (auto* t : {&g_c, &g_rho, &lower, &upper, &g_lower, &g_upper}) check_dense(*t, "bounds_grads operand");
  AT_DISPATCH_FLOATING_TYPES(g_c.scalar_type(), "gmbound_bounds_grads_cpu", [&] {
    bounds_grads_impl<scalar_t>(g_c.const_data_ptr<scalar_t>(), g_rho.const_data_ptr<scalar_t>(),
                                lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu,
                                g_lower.mutable_data_ptr<scalar_t>(), g_upper.mutable_data_ptr<scalar_t>(),
                                g_c.numel());
  });
}

void CpuKernels::relax_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                               const at::Tensor& cbias, Geom geom, double negative_slope, const at::Tensor& z,
                               const at::Tensor& bias) {
  for (auto* t : {&lam, &lower, &upper, &z, &bias}) check_dense(*t, "relax_forward operand");
  const Dims d = lam_dims(lam, lower);
  TORCH_CHECK(!cbias.defined() || geom.C * geom.HW == d.S, "gmbound: relax_forward geometry does not fit");
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_relax_forward_cpu", [&] {
    relax_forward_impl<scalar_t>(lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
                                 upper.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(cbias), geom,
                                 static_cast<scalar_t>(negative_slope), z.mutable_data_ptr<scalar_t>(), bias.mutable_data_ptr<scalar_t>(), d);
  });
}

void CpuKernels::relax_backward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                const at::Tensor& g_z, const at::Tensor& g_bias, const at::Tensor& cbias, Geom geom,
                                double negative_slope, const at::Tensor& g_lam, const at::Tensor& g_lower,
                                const at::Tensor& g_upper, const at::Tensor& z, const at::Tensor& g_cbias) {
  for (auto* t : {&lam, &lower, &upper, &g_z, &g_bias, &g_lam, &g_lower, &g_upper}) {
    check_dense(*t, "relax_backward operand");
  }
  if (z.defined()) check_dense(z, "relax_backward z");
  const Dims d = lam_dims(lam, lower);
  TORCH_CHECK(!g_cbias.defined() || cbias.defined(), "gmbound: relax_backward: g_cbias needs cbias");
  TORCH_CHECK(!cbias.defined() || geom.C * geom.HW == d.S, "gmbound: relax_backward geometry does not fit");
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_relax_backward_cpu", [&] {
    relax_backward_impl<scalar_t>(lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
                                  upper.const_data_ptr<scalar_t>(), g_z.const_data_ptr<scalar_t>(),
                                  g_bias.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(cbias), geom,
                                  static_cast<scalar_t>(negative_slope), g_lam.mutable_data_ptr<scalar_t>(), g_lower.mutable_data_ptr<scalar_t>(),
                                  g_upper.mutable_data_ptr<scalar_t>(), mut_or_null<scalar_t>(z),
                                  mut_or_null<scalar_t>(g_cbias), d);
  });
}

void CpuKernels::concretize_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,
                                    bool relu, const at::Tensor& out) {
  for (auto* t : {&lam, &lower, &upper, &out}) check_dense(*t, "concretize operand");
  const Dims d = lam_dims(lam, lower);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_concretize_cpu", [&] {
    concretize_impl<scalar_t>(lam.const_data_ptr<scalar_t>(), lower.const_data_ptr<scalar_t>(),
                              upper.const_data_ptr<scalar_t>(), relu, out.mutable_data_ptr<scalar_t>(), d);
  });
}

void CpuKernels::concretize_backward(const at::Tensor& g_out, const at::Tensor& lam, const at::Tensor& lower,
                                     const at::Tensor& upper, bool relu, const at::Tensor& g_lam,
                                     const at::Tensor& g_lower, const at::Tensor& g_upper) {
  for (auto* t : {&g_out, &lam, &lower, &upper, &g_lam, &g_lower, &g_upper}) {
    check_dense(*t, "concretize_backward operand");
  }
  const Dims d = lam_dims(lam, lower);
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "gmbound_concretize_backward_cpu", [&] {
    concretize_backward_impl<scalar_t>(g_out.const_data_ptr<scalar_t>(), lam.const_data_ptr<scalar_t>(),
                                       lower.const_data_ptr<scalar_t>(), upper.const_data_ptr<scalar_t>(), relu,
                                       g_lam.mutable_data_ptr<scalar_t>(), g_lower.mutable_data_ptr<scalar_t>(),
                                       g_upper.mutable_data_ptr<scalar_t>(), d);
  });
}

// ------------------------------------------------------------------------------- few-channel transposed convolution
// A[ci, oy, ox] = sum_{co, ky, kx} z[co, iy, ix] W[co, ci, ky, kx] over oy = iy s - p + ky d (and x
// alike). In two passes per chunk of rows: P = z W as one GEMM ([rows * H * W, C_out] x [C_out,
// kh * kw * C_in], MKL at full speed: z's channels-last rows are already that matrix), then each
// input position's kh * kw * C_in products are added into the output pixels they reach (col2im).
// Chunks keep P in cache; rows are independent, so the sum order is fixed (deterministic).
// One row's fold, with C_in fixed at compile time when it is 1 (the usual grey image) so the
// innermost loop is a plain strided add. The input columns ix that reach the output for tap kx,
// 0 <= ix s - p + kx d < W_out, are worked out once, so the loops carry no bounds tests.
template <typename T, int64_t kCi>
void fold_row(const T* pr, T* a, int64_t ci_runtime, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo, const int64_t* k,
              const int64_t* s, const int64_t* p, const int64_t* d, const int64_t* ix_lo, const int64_t* ix_hi) {
  const int64_t Ci = kCi > 0 ? kCi : ci_runtime;
  const int64_t taps = Ci * k[0] * k[1];
  std::fill(a, a + Ho * Wo * Ci, T(0));
  for (int64_t iy = 0; iy < Hi; ++iy) {
    for (int64_t ky = 0; ky < k[0]; ++ky) {
      const int64_t oy = iy * s[0] - p[0] + ky * d[0];
      if (oy < 0 || oy >= Ho) continue;
      T* arow = a + oy * Wo * Ci;
      for (int64_t kx = 0; kx < k[1]; ++kx) {
        const T* pk = pr + iy * Wi * taps + (ky * k[1] + kx) * Ci;  // [ix][ky][kx][ci] at ix = 0
        const int64_t shift = kx * d[1] - p[1];                      // ox = ix s + shift
        for (int64_t ix = ix_lo[kx]; ix < ix_hi[kx]; ++ix) {
          T* ao = arow + (ix * s[1] + shift) * Ci;
          const T* pp = pk + ix * taps;
          for (int64_t ci = 0; ci < Ci; ++ci) ao[ci] += pp[ci];
        }
      }
    }
  }
}

template <typename T>
void fold_products(const T* P, T* A, int64_t rows, int64_t Ci, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo,
                   const int64_t* k, const int64_t* s, const int64_t* p, const int64_t* d) {
  std::vector<int64_t> ix_lo(k[1]), ix_hi(k[1]);
  for (int64_t kx = 0; kx < k[1]; ++kx) {
    const int64_t shift = kx * d[1] - p[1];                                  // ox = ix s + shift
    ix_lo[kx] = shift >= 0 ? 0 : (-shift + s[1] - 1) / s[1];                 // first ix with ox >= 0
    const int64_t last = Wo - 1 - shift;                                     // ix s <= last
    ix_hi[kx] = std::max<int64_t>(ix_lo[kx], last < 0 ? 0 : std::min(Wi, last / s[1] + 1));
  }
  const int64_t taps = Ci * k[0] * k[1];
  for (int64_t r = 0; r < rows; ++r) {
    const T* pr = P + r * Hi * Wi * taps;
    T* a = A + r * Ho * Wo * Ci;
    if (Ci == 1) {
      fold_row<T, 1>(pr, a, Ci, Hi, Wi, Ho, Wo, k, s, p, d, ix_lo.data(), ix_hi.data());
    } else {
      fold_row<T, 0>(pr, a, Ci, Hi, Wi, Ho, Wo, k, s, p, d, ix_lo.data(), ix_hi.data());
    }
  }
}

at::Tensor CpuKernels::conv_transpose_few_channels(const at::Tensor& z, const at::Tensor& weight,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, at::IntArrayRef output_padding) {
  TORCH_CHECK(z.dim() == 4 && weight.dim() == 4 && z.size(1) == weight.size(0) && weight.size(1) <= kFewChannels,
              "gmbound: conv_transpose_few_channels: z ", z.sizes(), " and weight ", weight.sizes(), " do not fit");
  TORCH_CHECK(z.device().is_cpu() && weight.device().is_cpu() && z.scalar_type() == weight.scalar_type(),
              "gmbound: conv_transpose_few_channels: z and weight must be CPU tensors of one dtype");
  const int64_t R = z.size(0), Co = z.size(1), Hi = z.size(2), Wi = z.size(3), Ci = weight.size(1);
  const int64_t k[2] = {weight.size(2), weight.size(3)};
  const int64_t s[2] = {stride[0], stride[1]}, p[2] = {padding[0], padding[1]}, d[2] = {dilation[0], dilation[1]};
  const int64_t Ho = (Hi - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + output_padding[0] + 1;
  const int64_t Wo = (Wi - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + output_padding[1] + 1;
  const int64_t taps = Ci * k[0] * k[1];
  // [C_out, ky, kx, C_in]: P's columns in the order the fold reads them
  const at::Tensor wmat = weight.permute({0, 2, 3, 1}).reshape({Co, taps}).contiguous();
  const at::Tensor zmat = z.permute({0, 2, 3, 1}).reshape({R * Hi * Wi, Co});  // a view of channels-last z
  at::Tensor out = at::empty({R, Ci, Ho, Wo}, z.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (R == 0) return out;
  const int64_t chunk = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, Hi * Wi * taps));  // P: <= 256 KB fp32
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "gmbound_conv_transpose_few_channels_cpu", [&] {
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, R, chunk, [&](int64_t begin, int64_t end) {
      // OpenMP workers do not inherit the caller's dispatch state: below autograd here as there
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor buf = at::empty({std::min(chunk, end - begin) * Hi * Wi, taps}, z.options());
      for (int64_t r0 = begin; r0 < end; r0 += chunk) {
        const int64_t rows = std::min(chunk, end - r0);
        at::Tensor prod = buf.narrow(0, 0, rows * Hi * Wi);
        at::mm_out(prod, zmat.narrow(0, r0 * Hi * Wi, rows * Hi * Wi), wmat);
        fold_products<scalar_t>(prod.const_data_ptr<scalar_t>(), out_p + r0 * Ci * Ho * Wo, rows, Ci, Hi, Wi, Ho,
                                Wo, k, s, p, d);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(gmbound, CPU, m) { register_ops<CpuKernels>(m); }

}  // namespace gmbound
