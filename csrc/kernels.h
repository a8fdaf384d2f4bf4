// The element-wise / reduction kernels every device provides. The heavy products (matmul,
// convolution) go through ATen (MKL / oneDNN on CPU, cuBLAS / cuDNN on CUDA); these kernels do the
// work around them in one pass each.
//
// Contract for every kernel: all tensors share dtype (float32 or float64) and device, and are dense
// in the same memory order ("layout": plain contiguous, or channels-last blocks on CPU), so a
// per-sample block of S elements is contiguous and blocks of one tensor line up with another's.
// Shapes: Lambda [M, B, K, S] with M = 1 (shared by all radii) or M = N; bounds [N, B, S];
// bias terms [N, B, K]. Callers (composite.h) check shapes; kernels check the layout contract.
#pragma once

#include <ATen/ATen.h>

namespace gmbound {

// Where the channel of a position s of a per-sample block is: C channels of HW positions each;
// channels_last: s = hw * C + c, else s = c * HW + hw. A linear layer is C = features, HW = 1.
struct Geom {
  int64_t C;
  int64_t HW;
  bool channels_last;
};

#define GMBOUND_KERNEL_DECLS                                                                           \
  /* c = (u + l) / 2, rho = (u - l) / 2 of [relu(l), relu(u)] when relu */                             \
  static void centre_radius(const at::Tensor& lower, const at::Tensor& upper, bool relu,               \
                            const at::Tensor& c, const at::Tensor& rho);                               \
  /* in place: (c, rho) -> (c - rho, c + rho) */                                                       \
  static void bounds_from_centre(const at::Tensor& c_to_lower, const at::Tensor& rho_to_upper);        \
  /* g_c = g_l + g_u, g_rho = g_u - g_l */                                                             \
  static void centre_radius_grads(const at::Tensor& g_lower, const at::Tensor& g_upper,                \
                                  const at::Tensor& g_c, const at::Tensor& g_rho);                     \
  /* (g_c, g_rho) back to (g_l, g_u) through centre/radius and the optional ReLU on read */            \
  static void bounds_grads(const at::Tensor& g_c, const at::Tensor& g_rho, const at::Tensor& lower,    \
                           const at::Tensor& upper, bool relu, const at::Tensor& g_lower,              \
                           const at::Tensor& g_upper);                                                 \
  /* z = lam^+ alpha + lam^- s; bias = sum_s lam^- t + z * cbias[channel(s)] (cbias may be undefined); \
     the relaxation of leaky_relu with 0 <= negative_slope <= 1 (0: ReLU) */                           \
  static void relax_forward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,   \
                            const at::Tensor& cbias, Geom geom, double negative_slope,                 \
                            const at::Tensor& z, const at::Tensor& bias);                              \
  /* gradients of relax_forward given g_z [N, B, K, S] and g_bias [N, B, K]; also writes z when      \
     defined and the gradient of cbias when g_cbias is defined */                                      \
  static void relax_backward(const at::Tensor& lam, const at::Tensor& lower, const at::Tensor& upper,  \
                             const at::Tensor& g_z, const at::Tensor& g_bias, const at::Tensor& cbias, \
                             Geom geom, double negative_slope, const at::Tensor& g_lam,                \
                             const at::Tensor& g_lower, const at::Tensor& g_upper,                     \
                             const at::Tensor& z, const at::Tensor& g_cbias);                          \
  /* out [N, B, K] = sum_s lam^+ l + lam^- u (of relu(l), relu(u) when relu) */                        \
  static void concretize_forward(const at::Tensor& lam, const at::Tensor& lower,                       \
                                 const at::Tensor& upper, bool relu, const at::Tensor& out);           \
  static void concretize_backward(const at::Tensor& g_out, const at::Tensor& lam,                      \
                                  const at::Tensor& lower, const at::Tensor& upper, bool relu,         \
                                  const at::Tensor& g_lam, const at::Tensor& g_lower,                  \
                                  const at::Tensor& g_upper);                                          \
  /* max pooling's CROWN step (one window per output position p of channel c): lam [M, B, K, C, P], \
     index / up_slope / up_bias [N, B, C, P] (index: int64 in [0, HW)), lam_in [N, B, K, C, HW]:     \
     lam_in[.., c, index] += lam^+ + lam^- up_slope; bias [N, B, K] = sum lam^- up_bias.             \
     channels_last: lam and lam_in in channels-last blocks (CPU only) */                             \
  static void maxpool_relax_forward(const at::Tensor& lam, const at::Tensor& index,                    \
                                    const at::Tensor& up_slope, const at::Tensor& up_bias,             \
                                    bool channels_last, const at::Tensor& lam_in,                      \
                                    const at::Tensor& bias);                                           \
  /* its gradients w.r.t. lam, up_slope and up_bias given g_lam_in and g_bias */                       \
  static void maxpool_relax_backward(const at::Tensor& g_lam_in, const at::Tensor& g_bias,             \
                                     const at::Tensor& lam, const at::Tensor& index,                   \
                                     const at::Tensor& up_slope, const at::Tensor& up_bias,            \
                                     bool channels_last, const at::Tensor& g_lam,                      \
                                     const at::Tensor& g_up_slope, const at::Tensor& g_up_bias);

// CPU: oneDNN convolutions run markedly faster on channels-last data, so conv-layer bounds and
// Lambda are kept in channels-last blocks there.
struct CpuKernels {
  static constexpr bool channels_last = true;
  GMBOUND_KERNEL_DECLS
  // Transposed convolution whose output has few channels (CROWN's step back to the input image:
  // Lambda [R, C_out, H, W] -> [R, C_in <= kFewChannels, H_in, W_in]), which oneDNN runs at a
  // small fraction of its usual speed. z: channels-last blocks; weight [C_out, C_in, kh, kw];
  // returns channels-last [R, C_in, H_in, W_in] (H_in, W_in from output_padding as in ATen).
  static constexpr int64_t kFewChannels = 4;
  static at::Tensor conv_transpose_few_channels(const at::Tensor& z, const at::Tensor& weight,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation, at::IntArrayRef output_padding);
};

struct CudaKernels {
  static constexpr bool channels_last = false;
  GMBOUND_KERNEL_DECLS
};

#undef GMBOUND_KERNEL_DECLS

}  // namespace gmbound
