// The gmbound ops, written once over a device's kernel set K (CpuKernels or CudaKernels):
// argument checks, layout, the heavy products through ATen, and the fused kernels around them.
// cpu/ops_cpu.cpp and cuda/ops_cuda.cu instantiate Ops<K> and register it for their device.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace gmbound {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// ------------------------------------------------------------------------------- argument checks
inline void check_float(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), "gmbound::", op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "gmbound::", op, ": ",
              name, " must be float32 or float64, got ", t.scalar_type());
}

// Every tensor in `ts` has the dtype and device of the first one.
inline void check_same(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const Tensor* ref = nullptr;
  const char* ref_name = nullptr;
  for (const auto& [name, t] : ts) {
    if (t == nullptr || !t->defined()) continue;
    check_float(*t, op, name);
    if (ref == nullptr) {
      ref = t;
      ref_name = name;
      continue;
    }
    TORCH_CHECK(t->scalar_type() == ref->scalar_type(), "gmbound::", op, ": dtype mismatch: ", name,
                " is ", t->scalar_type(), " but ", ref_name, " is ", ref->scalar_type());
    TORCH_CHECK(t->device() == ref->device(), "gmbound::", op, ": device mismatch: ", name, " is on ",
                t->device(), " but ", ref_name, " is on ", ref->device());
  }
}

inline void check_pair(const char* op, const Tensor& lower, const Tensor& upper) {
  TORCH_CHECK(lower.sizes() == upper.sizes(), "gmbound::", op, ": lower ", lower.sizes(),
              " and upper ", upper.sizes(), " differ in shape");
}

inline void check_lam(const char* op, const Tensor& lam, const Tensor& lower) {
  // lam [M, B, K, *S] against bounds [N, B, *S]
  TORCH_CHECK(lower.dim() >= 3, "gmbound::", op, ": bounds must be [N, B, *S], got ", lower.sizes());
  TORCH_CHECK(lam.dim() == lower.dim() + 1, "gmbound::", op, ": lam must be [M, B, K, *S] for bounds ",
              lower.sizes(), ", got ", lam.sizes());
  TORCH_CHECK(lam.size(0) == 1 || lam.size(0) == lower.size(0), "gmbound::", op,
              ": lam's radius axis must be 1 or N = ", lower.size(0), ", got ", lam.size(0));
  TORCH_CHECK(lam.size(1) == lower.size(1), "gmbound::", op, ": lam has batch ", lam.size(1),
              " but the bounds have ", lower.size(1));
  TORCH_CHECK(lam.sizes().slice(3) == lower.sizes().slice(2), "gmbound::", op, ": lam's layer shape ",
              lam.sizes().slice(3), " differs from the bounds' ", lower.sizes().slice(2));
}

inline void check_conv_args(const char* op, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "gmbound::", op,
              ": stride, padding and dilation need 2 entries each");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0, "gmbound::", op,
                ": need stride >= 1, dilation >= 1, padding >= 0");
  }
}

// ------------------------------------------------------------------------------- layout helpers
// Channels-last blocks: [..., C, H, W] whose per-sample blocks are HWC-ordered, leading axes nested
// densely: what a 4-D channels_last tensor becomes when its first axis is unflattened. C = 1 counts
// as plain contiguous (both orders coincide).
inline bool is_cl_block(const Tensor& t) {
  const int64_t d = t.dim();
  if (d < 4) return false;
  const auto sz = t.sizes();
  const auto st = t.strides();
  const int64_t C = sz[d - 3], H = sz[d - 2], W = sz[d - 1];
  if (C <= 1 || t.numel() == 0) return false;
  if (st[d - 3] != 1) return false;
  if (W > 1 && st[d - 1] != C) return false;
  if (H > 1 && st[d - 2] != W * C) return false;
  int64_t expect = C * H * W;
  for (int64_t i = d - 4; i >= 0; --i) {
    if (sz[i] > 1 && st[i] != expect) return false;
    expect *= sz[i];
  }
  return true;
}

// `t` dense in the layout: channels-last blocks (cl) or plain contiguous. No copy when it already is.
inline Tensor to_layout(const Tensor& t, bool cl) {
  const int64_t d = t.dim();
  if (!cl || d < 4 || t.size(d - 3) <= 1 || t.numel() == 0) return t.contiguous();
  if (is_cl_block(t)) return t;
  const auto sz = t.sizes();
  Tensor t4 = t.reshape({-1, sz[d - 3], sz[d - 2], sz[d - 1]});
  return t4.contiguous(at::MemoryFormat::ChannelsLast).view(sz);
}

inline Tensor empty_layout(at::IntArrayRef sizes, const at::TensorOptions& opt, bool cl) {
  const int64_t d = static_cast<int64_t>(sizes.size());
  if (!cl || d < 4 || sizes[d - 3] <= 1) return at::empty(sizes, opt);
  int64_t rows = 1;
  for (int64_t i = 0; i < d - 3; ++i) rows *= sizes[i];
  return at::empty({rows, sizes[d - 3], sizes[d - 2], sizes[d - 1]},
                   opt.memory_format(at::MemoryFormat::ChannelsLast))
      .view(sizes);
}

// Weights in the data's layout: ATen would otherwise reorder them on every convolution call.
inline Tensor weight_layout(const Tensor& w, bool cl) {
  return cl ? w.contiguous(at::MemoryFormat::ChannelsLast) : w.contiguous();
}

// A 4-D convolution operand as the convolution should see it: with one channel both layouts
// coincide in memory, but only channels-last strides make oneDNN produce channels-last output.
inline Tensor conv_operand(const Tensor& t4, bool cl) {
  if (!cl || t4.dim() != 4 || t4.size(1) != 1 || !t4.is_contiguous()) return t4;
  return t4.as_strided(t4.sizes(), {t4.size(2) * t4.size(3), 1, t4.size(3), 1}, t4.storage_offset());
}

inline bool same_significant_strides(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (a.size(i) > 1 && a.stride(i) != b.stride(i)) return false;
  }
  return true;
}

// A gradient laid out like the tensor it belongs to (what torch.empty_like(ref) gives).
inline Tensor like(const Tensor& grad, const Tensor& ref) {
  if (ref.is_non_overlapping_and_dense() && same_significant_strides(grad, ref)) return grad;
  Tensor out = at::empty_like(ref);
  out.copy_(grad);
  return out;
}

inline Tensor none_like(const Tensor& ref) { return at::empty({0}, ref.options()); }

inline Geom flat_geom(const Tensor& bounds) {
  // only the block size matters when no per-channel bias is read
  return Geom{bounds.numel() / std::max<int64_t>(1, bounds.size(0) * bounds.size(1)), 1, false};
}

inline std::vector<int64_t> cat_sizes(at::IntArrayRef a, at::IntArrayRef b) {
  std::vector<int64_t> out(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// ================================================================================ the ops
template <class K>
struct Ops {
  static constexpr bool kCL = K::channels_last;

  // --------------------------------------------------------------------------- interval: linear
  static Tensor2 interval_linear(const Tensor& lower, const Tensor& upper, const Tensor& weight,
                                 const OptTensor& bias, bool relu_input) {
    const char* op = "interval_linear";
    check_same(op, {{"lower", &lower}, {"upper", &upper}, {"weight", &weight},
                    {"bias", bias ? &*bias : nullptr}});
    check_pair(op, lower, upper);
    TORCH_CHECK(lower.dim() == 3, "gmbound::", op, ": bounds must be [N, B, in], got ", lower.sizes());
    TORCH_CHECK(weight.dim() == 2 && weight.size(1) == lower.size(2), "gmbound::", op, ": weight ",
                weight.sizes(), " does not take ", lower.size(2), " input features");
    TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)), "gmbound::", op,
                ": bias must be [", weight.size(0), "]");
    const int64_t N = lower.size(0), B = lower.size(1), in = lower.size(2), out = weight.size(0);
    Tensor l = lower.contiguous(), u = upper.contiguous();
    Tensor c = at::empty_like(l), rho = at::empty_like(l);
    K::centre_radius(l, u, relu_input, c, rho);
    Tensor c2 = c.view({N * B, in}), r2 = rho.view({N * B, in});
    Tensor lo = bias ? at::addmm(*bias, c2, weight.t()) : at::mm(c2, weight.t());
    Tensor up = at::mm(r2, weight.abs().t());
    K::bounds_from_centre(lo, up);
    return {lo.view({N, B, out}), up.view({N, B, out})};
  }

  static Tensor4 interval_linear_backward(const Tensor& g_lower, const Tensor& g_upper,
                                          const Tensor& lower, const Tensor& upper, const Tensor& weight,
                                          bool has_bias, bool relu_input, std::array<bool, 4> mask) {
    const char* op = "interval_linear_backward";
    check_same(op, {{"grad_lower", &g_lower}, {"grad_upper", &g_upper}, {"lower", &lower},
                    {"upper", &upper}, {"weight", &weight}});
    check_pair(op, lower, upper);
    TORCH_CHECK(lower.dim() == 3 && weight.dim() == 2 && weight.size(1) == lower.size(2),
                "gmbound::", op, ": bad shapes");
    const int64_t N = lower.size(0), B = lower.size(1), in = lower.size(2), out = weight.size(0);
    TORCH_CHECK(g_lower.sizes() == at::IntArrayRef({N, B, out}) && g_upper.sizes() == g_lower.sizes(),
                "gmbound::", op, ": gradients must be [N, B, out]");
    Tensor gl = g_lower.contiguous(), gu = g_upper.contiguous();
    Tensor gc = at::empty_like(gl), gr = at::empty_like(gl);
    K::centre_radius_grads(gl, gu, gc, gr);
    Tensor gc2 = gc.view({N * B, out}), gr2 = gr.view({N * B, out});
    Tensor l = lower.contiguous(), u = upper.contiguous();
    Tensor g_l = none_like(lower), g_u = none_like(upper), g_w = none_like(weight), g_b = none_like(weight);
    if (mask[0] || mask[1]) {
      Tensor gic = at::mm(gc2, weight), gir = at::mm(gr2, weight.abs());
      Tensor a = at::empty_like(l), b = at::empty_like(l);
      K::bounds_grads(gic, gir, l, u, relu_input, a, b);
      if (mask[0]) g_l = like(a, lower);
      if (mask[1]) g_u = like(b, upper);
    }
    if (mask[2]) {
      Tensor c = at::empty_like(l), rho = at::empty_like(l);
      K::centre_radius(l, u, relu_input, c, rho);
      g_w = at::mm(gc2.t(), c.view({N * B, in}));
      g_w.add_(weight.sign() * at::mm(gr2.t(), rho.view({N * B, in})));
      g_w = like(g_w, weight);
    }
    if (mask[3] && has_bias) g_b = gc2.sum(0);
    return {g_l, g_u, g_w, g_b};
  }

  // --------------------------------------------------------------------------- interval: conv2d
  static void check_conv_bounds(const char* op, const Tensor& lower, const Tensor& weight,
                                const OptTensor& bias) {
    TORCH_CHECK(lower.dim() == 5, "gmbound::", op, ": bounds must be [N, B, C, H, W], got ",
                lower.sizes());
    TORCH_CHECK(weight.dim() == 4 && weight.size(1) == lower.size(2), "gmbound::", op, ": weight ",
                weight.sizes(), " does not take ", lower.size(2), "-channel inputs (groups must be 1)");
    TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)), "gmbound::", op,
                ": bias must be [", weight.size(0), "]");
  }

  static Tensor2 interval_conv2d(const Tensor& lower, const Tensor& upper, const Tensor& weight,
                                 const OptTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, bool relu_input) {
    const char* op = "interval_conv2d";
    check_same(op, {{"lower", &lower}, {"upper", &upper}, {"weight", &weight},
                    {"bias", bias ? &*bias : nullptr}});
    check_pair(op, lower, upper);
    check_conv_bounds(op, lower, weight, bias);
    check_conv_args(op, stride, padding, dilation);
    const int64_t N = lower.size(0), B = lower.size(1);
    Tensor l = to_layout(lower, kCL), u = to_layout(upper, kCL);
    Tensor c = empty_layout(l.sizes(), l.options(), kCL), rho = empty_layout(l.sizes(), l.options(), kCL);
    K::centre_radius(l, u, relu_input, c, rho);
    Tensor c4 = conv_operand(c.flatten(0, 1), kCL), r4 = conv_operand(rho.flatten(0, 1), kCL);
    Tensor w = weight_layout(weight, kCL);
    Tensor lo = at::conv2d(c4, w, bias, stride, padding, dilation);
    Tensor up = at::conv2d(r4, w.abs(), {}, stride, padding, dilation);
    lo = to_layout(lo, kCL);
    up = to_layout(up, kCL);
    K::bounds_from_centre(lo, up);
    return {lo.unflatten(0, {N, B}), up.unflatten(0, {N, B})};
  }

  static Tensor4 interval_conv2d_backward(const Tensor& g_lower, const Tensor& g_upper, const Tensor& lower,
                                          const Tensor& upper, const Tensor& weight, bool has_bias,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, bool relu_input,
                                          std::array<bool, 4> mask) {
    const char* op = "interval_conv2d_backward";
    check_same(op, {{"grad_lower", &g_lower}, {"grad_upper", &g_upper}, {"lower", &lower},
                    {"upper", &upper}, {"weight", &weight}});
    check_pair(op, lower, upper);
    check_conv_bounds(op, lower, weight, std::nullopt);
    check_conv_args(op, stride, padding, dilation);
    TORCH_CHECK(g_lower.dim() == 5 && g_lower.sizes() == g_upper.sizes() &&
                    g_lower.size(0) == lower.size(0) && g_lower.size(1) == lower.size(1) &&
                    g_lower.size(2) == weight.size(0),
                "gmbound::", op, ": gradients must be [N, B, C_out, H_out, W_out]");
    Tensor gl = to_layout(g_lower, kCL), gu = to_layout(g_upper, kCL);
    Tensor gc = empty_layout(gl.sizes(), gl.options(), kCL), gr = empty_layout(gl.sizes(), gl.options(), kCL);
    K::centre_radius_grads(gl, gu, gc, gr);
    Tensor l = to_layout(lower, kCL), u = to_layout(upper, kCL);
    Tensor c = empty_layout(l.sizes(), l.options(), kCL), rho = empty_layout(l.sizes(), l.options(), kCL);
    K::centre_radius(l, u, relu_input, c, rho);
    Tensor w = weight_layout(weight, kCL);
    const bool need_in = mask[0] || mask[1];
    std::vector<int64_t> bias_sizes{weight.size(0)};
    auto [gic, gwc, gb] = at::convolution_backward(
        gc.flatten(0, 1), conv_operand(c.flatten(0, 1), kCL), w, has_bias ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt,
        stride, padding, dilation, false, {0, 0}, 1, {need_in, mask[2], mask[3] && has_bias});
    auto [gir, gwr, unused] = at::convolution_backward(
        gr.flatten(0, 1), conv_operand(rho.flatten(0, 1), kCL), w.abs(), std::nullopt, stride, padding, dilation, false, {0, 0}, 1,
        {need_in, mask[2], false});
    Tensor g_l = none_like(lower), g_u = none_like(upper), g_w = none_like(weight), g_b = none_like(weight);
    if (need_in) {
      Tensor a = empty_layout(l.sizes(), l.options(), kCL), b = empty_layout(l.sizes(), l.options(), kCL);
      K::bounds_grads(to_layout(gic, kCL).view(l.sizes()), to_layout(gir, kCL).view(l.sizes()), l, u,
                      relu_input, a, b);
      if (mask[0]) g_l = like(a, lower);
      if (mask[1]) g_u = like(b, upper);
    }
    if (mask[2]) g_w = like(gwc + w.sign() * gwr, weight);
    if (mask[3] && has_bias) g_b = gb;
    return {g_l, g_u, g_w, g_b};
  }

  // --------------------------------------------------------------------------- interval: input layer
  // The clipped box for every radius, [N, B, *S] twice (as gmbound.reference.primitives.input_box).
  static Tensor2 input_box(const Tensor& x, const Tensor& radii, const OptTensor& x_min,
                           const OptTensor& x_max) {
    std::vector<int64_t> rshape{radii.size(0), radii.size(1)};
    for (int64_t i = 1; i < x.dim(); ++i) rshape.push_back(1);
    Tensor r = radii.reshape(rshape);
    Tensor lo = x - r, up = x + r;
    if (x_min) lo = at::maximum(lo, *x_min);
    if (x_max) up = at::minimum(up, *x_max);
    return {lo, up};
  }

  static void check_input_args(const char* op, const Tensor& x, const Tensor& radii, const OptTensor& x_min,
                               const OptTensor& x_max, const Tensor& weight, const OptTensor& bias) {
    check_same(op, {{"x", &x}, {"radii", &radii}, {"x_min", x_min ? &*x_min : nullptr},
                    {"x_max", x_max ? &*x_max : nullptr}, {"weight", &weight},
                    {"bias", bias ? &*bias : nullptr}});
    TORCH_CHECK(x.dim() >= 2, "gmbound::", op, ": x must be [B, *S], got ", x.sizes());
    TORCH_CHECK(radii.dim() == 2 && radii.size(1) == x.size(0), "gmbound::", op, ": radii must be [N, B=",
                x.size(0), "], got ", radii.sizes());
    for (const OptTensor* d : {&x_min, &x_max}) {
      if (*d) {
        TORCH_CHECK(at::infer_size((*d)->sizes(), x.sizes()) == x.sizes(), "gmbound::", op,
                    ": x_min / x_max of shape ", (*d)->sizes(), " must broadcast to x ", x.sizes());
      }
    }
  }

  // Gradients of input_box: (g_x, g_radii, g_x_min, g_x_max) from (g_lower, g_upper) of the box,
  // with torch's tie rule for maximum / minimum (half the gradient to each side).
  static Tensor4 input_box_backward(const Tensor& g_lo, const Tensor& g_up, const Tensor& x,
                                    const Tensor& radii, const OptTensor& x_min, const OptTensor& x_max) {
    std::vector<int64_t> rshape{radii.size(0), radii.size(1)};
    for (int64_t i = 1; i < x.dim(); ++i) rshape.push_back(1);
    Tensor r = radii.reshape(rshape);
    Tensor gs_lo = g_lo, gs_up = g_up, g_xmin = none_like(x), g_xmax = none_like(x);
    if (x_min) {
      Tensor a = x - r;
      Tensor half = at::where(a == *x_min, g_lo / 2, g_lo);
      gs_lo = half.masked_fill(a < *x_min, 0);
      g_xmin = at::sum_to(half.masked_fill(a > *x_min, 0), x_min->sizes());
    }
    if (x_max) {
      Tensor a = x + r;
      Tensor half = at::where(a == *x_max, g_up / 2, g_up);
      gs_up = half.masked_fill(a > *x_max, 0);
      g_xmax = at::sum_to(half.masked_fill(a < *x_max, 0), x_max->sizes());
    }
    Tensor g_x = (gs_lo + gs_up).sum(0);
    Tensor g_r = (gs_up - gs_lo).flatten(2).sum(-1);
    return {g_x, g_r, g_xmin, g_xmax};
  }

  static Tensor2 interval_input_linear(const Tensor& x, const Tensor& radii, const OptTensor& x_min,
                                       const OptTensor& x_max, const Tensor& weight, const OptTensor& bias) {
    const char* op = "interval_input_linear";
    check_input_args(op, x, radii, x_min, x_max, weight, bias);
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), "gmbound::", op,
                ": x must be [B, in] and weight [out, in]; got ", x.sizes(), " and ", weight.sizes());
    if (x_min || x_max) {
      auto [lo, up] = input_box(x, radii, x_min, x_max);
      return interval_linear(lo, up, weight, bias, false);
    }
    // Unclipped: the centre is x for every radius and the radius r * (|W| 1), a rank-one scaling.
    const int64_t N = radii.size(0), B = x.size(0), out = weight.size(0);
    Tensor c = bias ? at::addmm(*bias, x.contiguous(), weight.t()) : at::mm(x.contiguous(), weight.t());
    Tensor a = weight.abs().sum(1);  // |W| 1: [out]
    Tensor ra = radii.unsqueeze(-1) * a;  // [N, B, out]
    Tensor lo = at::empty({N, B, out}, x.options()), up = at::empty({N, B, out}, x.options());
    at::sub_out(lo, c, ra);
    at::add_out(up, c, ra);
    return {lo, up};
  }

  static Tensor6 interval_input_linear_backward(const Tensor& g_lower, const Tensor& g_upper, const Tensor& x,
                                                const Tensor& radii, const OptTensor& x_min,
                                                const OptTensor& x_max, const Tensor& weight, bool has_bias,
                                                std::array<bool, 6> mask) {
    const char* op = "interval_input_linear_backward";
    check_input_args(op, x, radii, x_min, x_max, weight, std::nullopt);
    Tensor g_x = none_like(x), g_r = none_like(x), g_xmin = none_like(x), g_xmax = none_like(x);
    Tensor g_w = none_like(x), g_b = none_like(x);
    const bool need_box = mask[0] || mask[1] || mask[2] || mask[3];
    if (x_min || x_max) {
      auto [lo, up] = input_box(x, radii, x_min, x_max);
      auto [gl, gu, gw, gb] = interval_linear_backward(g_lower, g_upper, lo, up, weight, has_bias, false,
                                                       {need_box, need_box, mask[4], mask[5]});
      if (need_box) {
        auto [a, b, c, d] = input_box_backward(gl, gu, x, radii, x_min, x_max);
        g_x = a, g_r = b, g_xmin = c, g_xmax = d;
      }
      g_w = gw, g_b = gb;
    } else {
      Tensor gl = g_lower.contiguous(), gu = g_upper.contiguous();
      Tensor gc = (gl + gu).sum(0);           // [B, out]: the shared centre
      Tensor gra = gu - gl;                   // [N, B, out]: on r * a
      Tensor a = weight.abs().sum(1);         // [out]
      if (mask[0]) g_x = at::mm(gc, weight);
      if (mask[1]) g_r = at::matmul(gra, a);
      if (mask[4]) {
        // [out]; a bare {0, 1} also matches sum(DimnameList) (0 as a null pointer) in torch 2.11
        Tensor ga = (gra * radii.unsqueeze(-1)).sum(at::IntArrayRef{0, 1});
        g_w = at::mm(gc.t(), x.contiguous()) + weight.sign() * ga.unsqueeze(1);
      }
      if (mask[5] && has_bias) g_b = gc.sum(0);
    }
    if (!mask[0]) g_x = none_like(x);
    if (!mask[1]) g_r = none_like(x);
    if (!mask[2]) g_xmin = none_like(x);
    if (!mask[3]) g_xmax = none_like(x);
    if (mask[0]) g_x = like(g_x, x);
    if (mask[1]) g_r = like(g_r, radii);
    if (mask[2] && x_min) g_xmin = like(g_xmin, *x_min);
    if (mask[3] && x_max) g_xmax = like(g_xmax, *x_max);
    if (mask[4]) g_w = like(g_w, weight);
    return {g_x, g_r, g_xmin, g_xmax, g_w, g_b};
  }

  static Tensor2 interval_input_conv2d(const Tensor& x, const Tensor& radii, const OptTensor& x_min,
                                       const OptTensor& x_max, const Tensor& weight, const OptTensor& bias,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation) {
    const char* op = "interval_input_conv2d";
    check_input_args(op, x, radii, x_min, x_max, weight, bias);
    TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1), "gmbound::", op,
                ": x must be [B, C, H, W] and weight [C', C, kh, kw]; got ", x.sizes(), " and ", weight.sizes());
    check_conv_args(op, stride, padding, dilation);
    if (x_min || x_max) {
      auto [lo, up] = input_box(x, radii, x_min, x_max);
      return interval_conv2d(lo, up, weight, bias, stride, padding, dilation, false);
    }
    const int64_t N = radii.size(0), B = x.size(0);
    Tensor w = weight_layout(weight, kCL);
    Tensor c = to_layout(at::conv2d(conv_operand(to_layout(x, kCL), kCL), w, bias, stride, padding, dilation),
                         kCL);  // [B, C', H', W']
    Tensor ones = at::ones({1, x.size(1), x.size(2), x.size(3)}, x.options());
    Tensor a = to_layout(at::conv2d(ones, w.abs(), {}, stride, padding, dilation), kCL);  // |W| 1: [1, C', H', W']
    std::vector<int64_t> out_sizes{N, B, c.size(1), c.size(2), c.size(3)};
    Tensor ra = radii.reshape({N, B, 1, 1, 1}) * a;
    Tensor lo = empty_layout(out_sizes, x.options(), kCL), up = empty_layout(out_sizes, x.options(), kCL);
    at::sub_out(lo, c, ra);
    at::add_out(up, c, ra);
    return {lo, up};
  }

  static Tensor6 interval_input_conv2d_backward(const Tensor& g_lower, const Tensor& g_upper, const Tensor& x,
                                                const Tensor& radii, const OptTensor& x_min,
                                                const OptTensor& x_max, const Tensor& weight, bool has_bias,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation, std::array<bool, 6> mask) {
    const char* op = "interval_input_conv2d_backward";
    check_input_args(op, x, radii, x_min, x_max, weight, std::nullopt);
    check_conv_args(op, stride, padding, dilation);
    Tensor g_x = none_like(x), g_r = none_like(x), g_xmin = none_like(x), g_xmax = none_like(x);
    Tensor g_w = none_like(x), g_b = none_like(x);
    const bool need_box = mask[0] || mask[1] || mask[2] || mask[3];
    if (x_min || x_max) {
      auto [lo, up] = input_box(x, radii, x_min, x_max);
      auto [gl, gu, gw, gb] = interval_conv2d_backward(g_lower, g_upper, lo, up, weight, has_bias, stride,
                                                       padding, dilation, false,
                                                       {need_box, need_box, mask[4], mask[5]});
      if (need_box) {
        auto [a, b, c, d] = input_box_backward(gl, gu, x, radii, x_min, x_max);
        g_x = a, g_r = b, g_xmin = c, g_xmax = d;
      }
      g_w = gw, g_b = gb;
    } else {
      Tensor w = weight_layout(weight, kCL);
      Tensor gl = to_layout(g_lower, kCL), gu = to_layout(g_upper, kCL);
      Tensor gc = (gl + gu).sum(0);  // [B, C', H', W']: the shared centre
      Tensor gra = gu - gl;          // [N, B, C', H', W']: on r * a
      Tensor ones = at::ones({1, x.size(1), x.size(2), x.size(3)}, x.options());
      std::vector<int64_t> bias_sizes{weight.size(0)};
      auto [gx, gw, gb] = at::convolution_backward(
          to_layout(gc, kCL), conv_operand(to_layout(x, kCL), kCL), w,
          has_bias ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt, stride, padding, dilation, false,
          {0, 0}, 1, {mask[0], mask[4], mask[5] && has_bias});
      if (mask[0]) g_x = gx;
      if (mask[1] || mask[4]) {
        Tensor a = at::conv2d(ones, w.abs(), {}, stride, padding, dilation);  // [1, C', H', W']
        if (mask[1]) g_r = (gra * a).flatten(2).sum(-1);
        if (mask[4]) {
          Tensor ga = (gra * radii.reshape({radii.size(0), radii.size(1), 1, 1, 1})).sum(0).sum(0, true);
          auto [u0, gwa, u1] = at::convolution_backward(to_layout(ga, kCL), ones, w.abs(), std::nullopt, stride,
                                                        padding, dilation, false, {0, 0}, 1,
                                                        {false, true, false});
          g_w = gw + weight.sign() * gwa;
        }
      }
      if (mask[5] && has_bias) g_b = gb;
    }
    if (!mask[0]) g_x = none_like(x);
    if (!mask[1]) g_r = none_like(x);
    if (!mask[2]) g_xmin = none_like(x);
    if (!mask[3]) g_xmax = none_like(x);
    if (mask[0]) g_x = like(g_x, x);
    if (mask[1]) g_r = like(g_r, radii);
    if (mask[2] && x_min) g_xmin = like(g_xmin, *x_min);
    if (mask[3] && x_max) g_xmax = like(g_xmax, *x_max);
    if (mask[4]) g_w = like(g_w, weight);
    return {g_x, g_r, g_xmin, g_xmax, g_w, g_b};
  }

  // --------------------------------------------------------------------------- CROWN: ReLU relaxation
  // negative_slope a: the relaxation of leaky_relu(x) = max(x, a x), convex for 0 <= a <= 1 (a = 0:
  // ReLU). Outside that range the relaxation's shape changes (gmbound.ops.nonlinear handles it).
  static void check_slope(const char* op, double a) {
    TORCH_CHECK(a >= 0.0 && a <= 1.0, "gmbound::", op, ": negative_slope must be in [0, 1] (a convex leaky ReLU), got ",
                a);
  }

  static Tensor2 relu_relax(const Tensor& lam, const Tensor& lower, const Tensor& upper, double negative_slope) {
    const char* op = "relu_relax";
    check_slope(op, negative_slope);
    check_same(op, {{"lam", &lam}, {"lower", &lower}, {"upper", &upper}});
    check_pair(op, lower, upper);
    check_lam(op, lam, lower);
    const bool cl = kCL && is_cl_block(lower);  // keep the layout the bounds come in (CPU)
    Tensor lm = to_layout(lam, cl), l = to_layout(lower, cl), u = to_layout(upper, cl);
    const int64_t N = lower.size(0), B = lower.size(1), Kr = lam.size(2);
    Tensor z = empty_layout(cat_sizes({N, B, Kr}, lower.sizes().slice(2)), lam.options(), cl);
    Tensor bias = at::empty({N, B, Kr}, lam.options());
    K::relax_forward(lm, l, u, Tensor(), flat_geom(l), negative_slope, z, bias);
    return {z, bias};
  }

  static Tensor3 relu_relax_backward(const Tensor& g_z, const Tensor& g_bias, const Tensor& lam,
                                     const Tensor& lower, const Tensor& upper, std::array<bool, 3> mask,
                                     double negative_slope) {
    const char* op = "relu_relax_backward";
    check_slope(op, negative_slope);
    check_same(op, {{"grad_lam", &g_z}, {"grad_bias", &g_bias}, {"lam", &lam}, {"lower", &lower},
                    {"upper", &upper}});
    check_pair(op, lower, upper);
    check_lam(op, lam, lower);
    const int64_t N = lower.size(0), B = lower.size(1), Kr = lam.size(2);
    auto zsizes = cat_sizes({N, B, Kr}, lower.sizes().slice(2));
    TORCH_CHECK(g_z.sizes() == at::IntArrayRef(zsizes) && g_bias.sizes() == at::IntArrayRef({N, B, Kr}),
                "gmbound::", op, ": gradient shapes do not match the outputs");
    const bool cl = kCL && is_cl_block(lower);  // keep the layout the bounds come in (CPU)
    Tensor lm = to_layout(lam, cl), l = to_layout(lower, cl), u = to_layout(upper, cl);
    Tensor g_lam = empty_layout(lam.sizes(), lam.options(), cl);
    Tensor g_l = empty_layout(lower.sizes(), lower.options(), cl), g_u = empty_layout(lower.sizes(), lower.options(), cl);
    K::relax_backward(lm, l, u, to_layout(g_z, cl), g_bias.contiguous(), Tensor(), flat_geom(l), negative_slope, g_lam,
                      g_l, g_u,
                      Tensor(), Tensor());
    return {mask[0] ? like(g_lam, lam) : none_like(lam), mask[1] ? like(g_l, lower) : none_like(lower),
            mask[2] ? like(g_u, upper) : none_like(upper)};
  }

  // --------------------------------------------------------------------------- CROWN: fused steps
  static void check_step(const char* op, const Tensor& lam, const OptTensor& lower, const OptTensor& upper,
                         const Tensor& weight, const OptTensor& bias, double negative_slope) {
    check_slope(op, negative_slope);
    check_same(op, {{"lam", &lam}, {"lower", lower ? &*lower : nullptr}, {"upper", upper ? &*upper : nullptr},
                    {"weight", &weight}, {"bias", bias ? &*bias : nullptr}});
    TORCH_CHECK(lower.has_value() == upper.has_value(), "gmbound::", op,
                ": give both lower and upper (a ReLU to relax) or neither");
    TORCH_CHECK(lam.dim() >= 4, "gmbound::", op, ": lam must be [M, B, K, *S], got ", lam.sizes());
    if (lower) {
      check_pair(op, *lower, *upper);
      check_lam(op, lam, *lower);
    }
    TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)), "gmbound::", op,
                ": bias must be [", weight.size(0), "]");
  }

  static Tensor2 crown_linear_step(const Tensor& lam, const OptTensor& lower, const OptTensor& upper,
                                   const Tensor& weight, const OptTensor& bias, double negative_slope) {
    const char* op = "crown_linear_step";
    check_step(op, lam, lower, upper, weight, bias, negative_slope);
    TORCH_CHECK(lam.dim() == 4 && weight.dim() == 2 && lam.size(3) == weight.size(0), "gmbound::", op,
                ": lam [M, B, K, out] and weight [out, in] do not fit: ", lam.sizes(), ", ", weight.sizes());
    const int64_t B = lam.size(1), Kr = lam.size(2), out = weight.size(0), in = weight.size(1);
    Tensor z, bterm;
    if (lower) {
      const int64_t N = lower->size(0);
      z = at::empty({N, B, Kr, out}, lam.options());
      bterm = at::empty({N, B, Kr}, lam.options());
      K::relax_forward(lam.contiguous(), lower->contiguous(), upper->contiguous(), bias ? bias->contiguous() : Tensor(),
                       Geom{out, 1, false}, negative_slope, z, bterm);
    } else {
      z = lam.contiguous();
      bterm = bias ? at::matmul(z, *bias) : at::zeros({lam.size(0), B, Kr}, lam.options());
    }
    Tensor lam_in = at::mm(z.view({-1, out}), weight).view({z.size(0), B, Kr, in});
    return {lam_in, bterm};
  }

  static Tensor5 crown_linear_step_backward(const Tensor& g_in, const Tensor& g_bias, const Tensor& lam,
                                            const OptTensor& lower, const OptTensor& upper, const Tensor& weight,
                                            const OptTensor& bias, std::array<bool, 5> mask, double negative_slope) {
    const char* op = "crown_linear_step_backward";
    check_step(op, lam, lower, upper, weight, bias, negative_slope);
    check_same(op, {{"grad_lam_in", &g_in}, {"grad_bias", &g_bias}, {"lam", &lam}});
    const int64_t M = lam.size(0), B = lam.size(1), Kr = lam.size(2), out = weight.size(0), in = weight.size(1);
    const int64_t Mz = lower ? lower->size(0) : M;
    TORCH_CHECK(g_in.sizes() == at::IntArrayRef({Mz, B, Kr, in}) && g_bias.sizes() == at::IntArrayRef({Mz, B, Kr}),
                "gmbound::", op, ": gradient shapes do not match the outputs");
    Tensor gin2 = g_in.contiguous().view({-1, in});
    Tensor gz = at::mm(gin2, weight.t()).view({Mz, B, Kr, out});
    Tensor gb = g_bias.contiguous();
    Tensor g_lam, g_l = none_like(lam), g_u = none_like(lam), g_b = none_like(lam), z;
    if (lower) {
      Tensor l = lower->contiguous(), u = upper->contiguous();
      g_lam = at::empty_like(lam, at::MemoryFormat::Contiguous);
      Tensor gl = at::empty_like(l), gu = at::empty_like(l);
      if (mask[3]) z = at::empty({Mz, B, Kr, out}, lam.options());
      Tensor gcb = (bias && mask[4]) ? at::empty({out}, lam.options()) : Tensor();
      K::relax_backward(lam.contiguous(), l, u, gz, gb, bias ? bias->contiguous() : Tensor(), Geom{out, 1, false},
                        negative_slope, g_lam, gl, gu, z, gcb);
      if (mask[1]) g_l = like(gl, *lower);
      if (mask[2]) g_u = like(gu, *upper);
      if (gcb.defined()) g_b = gcb;
    } else {
      z = lam.contiguous();
      g_lam = bias ? gz + gb.unsqueeze(-1) * *bias : gz;
      if (bias && mask[4]) g_b = at::matmul(gb.reshape({-1}), z.view({-1, out}));
    }
    Tensor g_w = mask[3] ? like(at::mm(z.view({-1, out}).t(), gin2), weight) : none_like(weight);
    return {mask[0] ? like(g_lam, lam) : none_like(lam), g_l, g_u, g_w, g_b};
  }

  static void check_conv_step(const char* op, const Tensor& lam, const Tensor& weight,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              at::IntArrayRef output_padding) {
    check_conv_args(op, stride, padding, dilation);
    TORCH_CHECK(output_padding.size() == 2 && output_padding[0] >= 0 && output_padding[1] >= 0, "gmbound::",
                op, ": output_padding needs 2 non-negative entries");
    TORCH_CHECK(lam.dim() == 6 && weight.dim() == 4 && lam.size(3) == weight.size(0), "gmbound::", op,
                ": lam [M, B, K, C_out, H_out, W_out] and weight [C_out, C_in, kh, kw] do not fit: ", lam.sizes(),
                ", ", weight.sizes());
  }

  // Lambda back through conv2d(., W): the transposed convolution, in the kernels' layout.
  static Tensor conv_transpose(const Tensor& z4, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, at::IntArrayRef output_padding) {
    if constexpr (kCL) {  // CPU: oneDNN is slow when the output has few channels (the input image)
      if (weight.size(1) <= K::kFewChannels && is_cl_block(z4)) {
        return K::conv_transpose_few_channels(z4, weight, stride, padding, dilation, output_padding);
      }
    }
    Tensor out = at::conv_transpose2d(conv_operand(z4, kCL), weight_layout(weight, kCL), {}, stride, padding,
                                      output_padding, 1, dilation);
    return to_layout(out, kCL);
  }

  static Tensor2 crown_conv2d_step(const Tensor& lam, const OptTensor& lower, const OptTensor& upper,
                                   const Tensor& weight, const OptTensor& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   at::IntArrayRef output_padding, double negative_slope) {
    const char* op = "crown_conv2d_step";
    check_step(op, lam, lower, upper, weight, bias, negative_slope);
    check_conv_step(op, lam, weight, stride, padding, dilation, output_padding);
    const int64_t B = lam.size(1), Kr = lam.size(2), C = lam.size(3), H = lam.size(4), W = lam.size(5);
    Tensor z, bterm;
    if (lower) {
      const int64_t N = lower->size(0);
      z = empty_layout({N, B, Kr, C, H, W}, lam.options(), kCL);
      bterm = at::empty({N, B, Kr}, lam.options());
      K::relax_forward(to_layout(lam, kCL), to_layout(*lower, kCL), to_layout(*upper, kCL),
                       bias ? bias->contiguous() : Tensor(), Geom{C, H * W, kCL && C > 1}, negative_slope, z, bterm);
    } else {
      z = to_layout(lam, kCL);
      bterm = bias ? at::matmul(z.sum({-2, -1}), *bias) : at::zeros({lam.size(0), B, Kr}, lam.options());
    }
    Tensor lam_in = conv_transpose(z.flatten(0, 2), weight, stride, padding, dilation, output_padding);
    return {lam_in.unflatten(0, {z.size(0), B, Kr}), bterm};
  }

  static Tensor5 crown_conv2d_step_backward(const Tensor& g_in, const Tensor& g_bias, const Tensor& lam,
                                            const OptTensor& lower, const OptTensor& upper, const Tensor& weight,
                                            const OptTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, at::IntArrayRef output_padding,
                                            std::array<bool, 5> mask, double negative_slope) {
    const char* op = "crown_conv2d_step_backward";
    check_step(op, lam, lower, upper, weight, bias, negative_slope);
    check_conv_step(op, lam, weight, stride, padding, dilation, output_padding);
    check_same(op, {{"grad_lam_in", &g_in}, {"grad_bias", &g_bias}, {"lam", &lam}});
    const int64_t M = lam.size(0), B = lam.size(1), Kr = lam.size(2), C = lam.size(3), H = lam.size(4),
                  W = lam.size(5);
    const int64_t Mz = lower ? lower->size(0) : M;
    TORCH_CHECK(g_in.dim() == 6 && g_in.size(0) == Mz && g_in.size(1) == B && g_in.size(2) == Kr &&
                    g_in.size(3) == weight.size(1) && g_bias.sizes() == at::IntArrayRef({Mz, B, Kr}),
                "gmbound::", op, ": gradient shapes do not match the outputs");
    Tensor w = weight_layout(weight, kCL);
    Tensor gin4 = to_layout(g_in, kCL).flatten(0, 2);
    // z: Lambda after the relaxation, [Mz, B, K, C, H, W]; recomputed below rather than kept from the
    // forward pass. The transposed convolution is the adjoint of conv2d(., W): its input gradient is
    // conv2d(g, W) and its weight gradient that of conv2d with input g and output gradient z (the
    // plain convolution paths are faster than the transposed ones). That holds while the output
    // padding is below the stride; otherwise (dilation > stride) the transposed backward is used.
    const bool adjoint = output_padding[0] < stride[0] && output_padding[1] < stride[1];
    Tensor z = lower ? empty_layout({Mz, B, Kr, C, H, W}, lam.options(), kCL) : to_layout(lam, kCL);
    Tensor gin_op = conv_operand(gin4, kCL);
    Tensor gz4 = adjoint ? at::conv2d(gin_op, w, {}, stride, padding, dilation)
                         : std::get<0>(at::convolution_backward(gin_op, conv_operand(z.flatten(0, 2), kCL), w,
                                                                std::nullopt, stride, padding, dilation, true,
                                                                output_padding, 1, {true, false, false}));
    Tensor gz = to_layout(gz4, kCL).view(z.sizes());
    Tensor gb = g_bias.contiguous();
    Tensor g_lam, g_l = none_like(lam), g_u = none_like(lam), g_b = none_like(lam);
    if (lower) {
      Tensor l = to_layout(*lower, kCL), u = to_layout(*upper, kCL);
      g_lam = empty_layout(lam.sizes(), lam.options(), kCL);
      Tensor gl = empty_layout(l.sizes(), l.options(), kCL), gu = empty_layout(l.sizes(), l.options(), kCL);
      Tensor gcb = (bias && mask[4]) ? at::empty({C}, lam.options()) : Tensor();
      K::relax_backward(to_layout(lam, kCL), l, u, gz, gb, bias ? bias->contiguous() : Tensor(),
                        Geom{C, H * W, kCL && C > 1}, negative_slope, g_lam, gl, gu, mask[3] ? z : Tensor(), gcb);
      if (mask[1]) g_l = like(gl, *lower);
      if (mask[2]) g_u = like(gu, *upper);
      if (gcb.defined()) g_b = gcb;
    } else {
      g_lam = bias ? gz + gb.view({M, B, Kr, 1, 1, 1}) * bias->view({C, 1, 1}) : gz;
      if (bias && mask[4]) g_b = at::matmul(gb.reshape({-1}), z.sum({-2, -1}).reshape({-1, C}));
    }
    Tensor g_w = none_like(weight);
    if (mask[3]) {
      Tensor z_op = conv_operand(z.flatten(0, 2), kCL);
      g_w = adjoint ? std::get<1>(at::convolution_backward(z_op, gin_op, w, std::nullopt, stride, padding, dilation,
                                                           false, {0, 0}, 1, {false, true, false}))
                    : std::get<1>(at::convolution_backward(gin_op, z_op, w, std::nullopt, stride, padding, dilation,
                                                           true, output_padding, 1, {false, true, false}));
      g_w = like(g_w, weight);
    }
    return {mask[0] ? like(g_lam, lam) : none_like(lam), g_l, g_u, g_w, g_b};
  }

  // --------------------------------------------------------------------------- CROWN: max pooling
  // lam [M, B, K, C, H', W'] through the windows' lines (index / up_slope / up_bias [N, B, C, H', W'],
  // gmbound.reference.primitives.max_pool2d_relaxation) onto the pooling's input [N, B, K, C, H, W].
  // check_index: the range check of index reads it back to the host (a device sync on CUDA), so only
  // the forward op runs it; its backward receives the index the forward already checked.
  static void check_pool(const char* op, const Tensor& lam, const Tensor& index, const Tensor& up_slope,
                         const Tensor& up_bias, at::IntArrayRef in_hw, bool check_index) {
    check_same(op, {{"lam", &lam}, {"up_slope", &up_slope}, {"up_bias", &up_bias}});
    TORCH_CHECK(index.scalar_type() == at::kLong, "gmbound::", op, ": index must be int64, got ", index.scalar_type());
    TORCH_CHECK(index.device() == lam.device(), "gmbound::", op, ": device mismatch: index is on ", index.device(),
                " but lam is on ", lam.device());
    TORCH_CHECK(up_slope.dim() == 5 && index.sizes() == up_slope.sizes() && up_bias.sizes() == up_slope.sizes(),
                "gmbound::", op, ": index, up_slope and up_bias must be [N, B, C, H', W'] alike, got ", index.sizes(),
                ", ", up_slope.sizes(), ", ", up_bias.sizes());
    TORCH_CHECK(lam.dim() == 6 && (lam.size(0) == 1 || lam.size(0) == up_slope.size(0)) &&
                    lam.size(1) == up_slope.size(1) && lam.sizes().slice(3) == up_slope.sizes().slice(2),
                "gmbound::", op, ": lam must be [1 or N, B, K, C, H', W'] for lines ", up_slope.sizes(), ", got ",
                lam.sizes());
    TORCH_CHECK(in_hw.size() == 2 && in_hw[0] >= 1 && in_hw[1] >= 1, "gmbound::", op,
                ": in_hw must be 2 positive sizes");
    if (check_index && index.numel() > 0) {  // an index outside the input plane would write outside lam_in
      const auto [lo, hi] = at::aminmax(index);
      const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
      TORCH_CHECK(lo_v >= 0 && hi_v < in_hw[0] * in_hw[1], "gmbound::", op, ": index must lie in [0, ",
                  in_hw[0] * in_hw[1], ") (the input plane of ", in_hw[0], " x ", in_hw[1], "), got [", lo_v, ", ",
                  hi_v, "]");
    }
  }

  static Tensor2 max_pool2d_relax(const Tensor& lam, const Tensor& index, const Tensor& up_slope,
                                  const Tensor& up_bias, at::IntArrayRef in_hw) {
    const char* op = "max_pool2d_relax";
    check_pool(op, lam, index, up_slope, up_bias, in_hw, true);
    const bool cl = kCL && is_cl_block(lam);  // keep the layout Lambda comes in (CPU)
    const int64_t N = up_slope.size(0), B = lam.size(1), Kr = lam.size(2), C = lam.size(3);
    Tensor lam_in = empty_layout({N, B, Kr, C, in_hw[0], in_hw[1]}, lam.options(), cl);
    Tensor bias = at::empty({N, B, Kr}, lam.options());
    K::maxpool_relax_forward(to_layout(lam, cl), index.contiguous(), up_slope.contiguous(), up_bias.contiguous(), cl,
                             lam_in, bias);
    return {lam_in, bias};
  }

  static Tensor3 max_pool2d_relax_backward(const Tensor& g_lam_in, const Tensor& g_bias, const Tensor& lam,
                                           const Tensor& index, const Tensor& up_slope, const Tensor& up_bias,
                                           at::IntArrayRef in_hw, std::array<bool, 3> mask) {
    const char* op = "max_pool2d_relax_backward";
    check_pool(op, lam, index, up_slope, up_bias, in_hw, false);
    check_same(op, {{"grad_lam_in", &g_lam_in}, {"grad_bias", &g_bias}, {"lam", &lam}});
    const int64_t N = up_slope.size(0), B = lam.size(1), Kr = lam.size(2), C = lam.size(3);
    TORCH_CHECK(g_lam_in.sizes() == at::IntArrayRef({N, B, Kr, C, in_hw[0], in_hw[1]}) &&
                    g_bias.sizes() == at::IntArrayRef({N, B, Kr}),
                "gmbound::", op, ": gradient shapes do not match the outputs");
    const bool cl = kCL && is_cl_block(lam);
    Tensor g_lam = empty_layout(lam.sizes(), lam.options(), cl);
    Tensor g_s = at::empty(up_slope.sizes(), up_slope.options()), g_t = at::empty(up_bias.sizes(), up_bias.options());
    K::maxpool_relax_backward(to_layout(g_lam_in, cl), g_bias.contiguous(), to_layout(lam, cl), index.contiguous(),
                              up_slope.contiguous(), up_bias.contiguous(), cl, g_lam, g_s, g_t);
    return {mask[0] ? like(g_lam, lam) : none_like(lam), mask[1] ? like(g_s, up_slope) : none_like(up_slope),
            mask[2] ? like(g_t, up_bias) : none_like(up_bias)};
  }

  // --------------------------------------------------------------------------- CROWN: concretisation
  static Tensor concretize(const Tensor& lam, const Tensor& lower, const Tensor& upper, bool relu_input) {
    const char* op = "concretize";
    check_same(op, {{"lam", &lam}, {"lower", &lower}, {"upper", &upper}});
    check_pair(op, lower, upper);
    check_lam(op, lam, lower);
    const bool cl = kCL && is_cl_block(lower);  // keep the layout the bounds come in (CPU)
    Tensor out = at::empty({lower.size(0), lower.size(1), lam.size(2)}, lam.options());
    K::concretize_forward(to_layout(lam, cl), to_layout(lower, cl), to_layout(upper, cl), relu_input, out);
    return out;
  }

  static Tensor3 concretize_backward(const Tensor& g_out, const Tensor& lam, const Tensor& lower,
                                     const Tensor& upper, bool relu_input, std::array<bool, 3> mask) {
    const char* op = "concretize_backward";
    check_same(op, {{"grad_out", &g_out}, {"lam", &lam}, {"lower", &lower}, {"upper", &upper}});
    check_pair(op, lower, upper);
    check_lam(op, lam, lower);
    TORCH_CHECK(g_out.sizes() == at::IntArrayRef({lower.size(0), lower.size(1), lam.size(2)}), "gmbound::", op,
                ": grad_out must be [N, B, K]");
    const bool cl = kCL && is_cl_block(lower);  // keep the layout the bounds come in (CPU)
    Tensor l = to_layout(lower, cl), u = to_layout(upper, cl);
    Tensor g_lam = empty_layout(lam.sizes(), lam.options(), cl);
    Tensor gl = empty_layout(l.sizes(), l.options(), cl), gu = empty_layout(l.sizes(), l.options(), cl);
    K::concretize_backward(g_out.contiguous(), to_layout(lam, cl), l, u, relu_input, g_lam, gl, gu);
    return {mask[0] ? like(g_lam, lam) : none_like(lam), mask[1] ? like(gl, lower) : none_like(lower),
            mask[2] ? like(gu, upper) : none_like(upper)};
  }
};

// Register Ops<K> for one dispatch key (used inside TORCH_LIBRARY_IMPL blocks).
template <class K>
void register_ops(torch::Library& m) {
  using O = Ops<K>;
  m.impl("interval_linear", &O::interval_linear);
  m.impl("interval_conv2d", &O::interval_conv2d);
  m.impl("interval_input_linear", &O::interval_input_linear);
  m.impl("interval_input_conv2d", &O::interval_input_conv2d);
  m.impl("relu_relax", &O::relu_relax);
  m.impl("crown_linear_step", &O::crown_linear_step);
  m.impl("crown_conv2d_step", &O::crown_conv2d_step);
  m.impl("concretize", &O::concretize);
  m.impl("interval_linear_backward", &O::interval_linear_backward);
  m.impl("interval_conv2d_backward", &O::interval_conv2d_backward);
  m.impl("interval_input_linear_backward", &O::interval_input_linear_backward);
  m.impl("interval_input_conv2d_backward", &O::interval_input_conv2d_backward);
  m.impl("relu_relax_backward", &O::relu_relax_backward);
  m.impl("crown_linear_step_backward", &O::crown_linear_step_backward);
  m.impl("crown_conv2d_step_backward", &O::crown_conv2d_step_backward);
  m.impl("concretize_backward", &O::concretize_backward);
  m.impl("max_pool2d_relax", &O::max_pool2d_relax);
  m.impl("max_pool2d_relax_backward", &O::max_pool2d_relax_backward);
}

}  // namespace gmbound
