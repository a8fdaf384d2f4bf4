// The gmbound operator library: one schema per op; kernels live in cpu/ and cuda/ and are picked
// by the dispatcher from the tensors' device. Autograd formulas and shape-only (fake) kernels are
// registered from Python (gmbound/engine/_ops.py); every backward is itself an op below.
//
// Shapes: interval bounds [N, B, *S] (radius axis first); CROWN coefficients Lambda [M, B, K, *S]
// with M = 1 (the same for every radius) or M = N; bias terms [N or M, B, K].
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(gmbound, m) {
  // ---------------------------------------------------------------- interval (IBP) steps
  // [l, u] -> [c' - rho', c' + rho'], c' = W c + b, rho' = |W| rho; relu_input applies the pending
  // ReLU to [l, u] on read.
  m.def("interval_linear(Tensor lower, Tensor upper, Tensor weight, Tensor? bias, bool relu_input)"
        " -> (Tensor, Tensor)");
  m.def("interval_conv2d(Tensor lower, Tensor upper, Tensor weight, Tensor? bias, int[2] stride,"
        " int[2] padding, int[2] dilation, bool relu_input) -> (Tensor, Tensor)");
  // The first layer straight from the clipped box [max(x - r, x_min), min(x + r, x_max)]:
  // x [B, *S], radii [N, B]. Without clipping the centre W x + b is computed once for all radii
  // and the radius is the rank-one r * (|W| 1).
  m.def("interval_input_linear(Tensor x, Tensor radii, Tensor? x_min, Tensor? x_max, Tensor weight,"
        " Tensor? bias) -> (Tensor, Tensor)");
  m.def("interval_input_conv2d(Tensor x, Tensor radii, Tensor? x_min, Tensor? x_max, Tensor weight,"
        " Tensor? bias, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");

  // ---------------------------------------------------------------- CROWN steps
  // ReLU relaxation of Lambda (lower/upper: the ReLU's pre-activation bounds):
  // lam_z = lam^+ alpha + lam^- s, bias = sum(lam^- t). negative_slope a in [0, 1]: the relaxation
  // of leaky_relu(x) = max(x, a x) instead (here and in the fused steps).
  m.def("relu_relax(Tensor lam, Tensor lower, Tensor upper, float negative_slope=0.) -> (Tensor, Tensor)");
  // One back-substitution step: the ReLU relaxation (when lower/upper are given) fused with the
  // affine layer below it: lam_in = lam_z W, bias = sum(lam^- t) + lam_z . b.
  m.def("crown_linear_step(Tensor lam, Tensor? lower, Tensor? upper, Tensor weight, Tensor? bias,"
        " float negative_slope=0.) -> (Tensor, Tensor)");
  m.def("crown_conv2d_step(Tensor lam, Tensor? lower, Tensor? upper, Tensor weight, Tensor? bias,"
        " int[2] stride, int[2] padding, int[2] dilation, int[2] output_padding, float negative_slope=0.)"
        " -> (Tensor, Tensor)");
  // Lower bound of lam . a over a in [l, u] (relu of it when relu_input): lam^+ l + lam^- u.
  m.def("concretize(Tensor lam, Tensor lower, Tensor upper, bool relu_input) -> Tensor");
  // Max pooling: lam [M, B, K, C, H', W'] through each window's lines x_i* <= max <= s x_i* + t
  // (index: the flat input position of i* in its channel plane, int64; up_slope s, up_bias t, all
  // [N, B, C, H', W']) onto the input [N, B, K, C, H, W], in_hw = (H, W):
  // lam_in[.., c, index] += lam^+ + lam^- s (summed where windows overlap), bias = sum(lam^- t).
  m.def("max_pool2d_relax(Tensor lam, Tensor index, Tensor up_slope, Tensor up_bias, int[2] in_hw)"
        " -> (Tensor, Tensor)");

  // ---------------------------------------------------------------- backward ops
  // output_mask selects the gradients to compute; a gradient not asked for comes back empty ([0]).
  m.def("interval_linear_backward(Tensor grad_lower, Tensor grad_upper, Tensor lower, Tensor upper,"
        " Tensor weight, bool has_bias, bool relu_input, bool[4] output_mask)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("interval_conv2d_backward(Tensor grad_lower, Tensor grad_upper, Tensor lower, Tensor upper,"
        " Tensor weight, bool has_bias, int[2] stride, int[2] padding, int[2] dilation, bool relu_input,"
        " bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("interval_input_linear_backward(Tensor grad_lower, Tensor grad_upper, Tensor x, Tensor radii,"
        " Tensor? x_min, Tensor? x_max, Tensor weight, bool has_bias, bool[6] output_mask)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("interval_input_conv2d_backward(Tensor grad_lower, Tensor grad_upper, Tensor x, Tensor radii,"
        " Tensor? x_min, Tensor? x_max, Tensor weight, bool has_bias, int[2] stride, int[2] padding,"
        " int[2] dilation, bool[6] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("relu_relax_backward(Tensor grad_lam, Tensor grad_bias, Tensor lam, Tensor lower, Tensor upper,"
        " bool[3] output_mask, float negative_slope=0.) -> (Tensor, Tensor, Tensor)");
  m.def("crown_linear_step_backward(Tensor grad_lam_in, Tensor grad_bias, Tensor lam, Tensor? lower,"
        " Tensor? upper, Tensor weight, Tensor? bias, bool[5] output_mask, float negative_slope=0.)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("crown_conv2d_step_backward(Tensor grad_lam_in, Tensor grad_bias, Tensor lam, Tensor? lower,"
        " Tensor? upper, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation,"
        " int[2] output_padding, bool[5] output_mask, float negative_slope=0.)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("concretize_backward(Tensor grad_out, Tensor lam, Tensor lower, Tensor upper, bool relu_input,"
        " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("max_pool2d_relax_backward(Tensor grad_lam_in, Tensor grad_bias, Tensor lam, Tensor index,"
        " Tensor up_slope, Tensor up_bias, int[2] in_hw, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

// ------------------------------------------------------------------ the Python module gmbound._C
// Importing it runs the registrations above (static initialisers); it carries only build facts.
#ifndef GMBOUND_TORCH_VERSION
#define GMBOUND_TORCH_VERSION "unknown"
#endif

static struct PyModuleDef gmbound_module = {PyModuleDef_HEAD_INIT,
                                            "_C",
                                            "gmbound compiled bound kernels (torch.ops.gmbound)",
                                            -1,
                                            nullptr,
                                            nullptr,
                                            nullptr,
                                            nullptr,
                                            nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&gmbound_module);
  if (mod == nullptr) return nullptr;
#ifdef GMBOUND_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(mod, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddStringConstant(mod, "TORCH_VERSION", GMBOUND_TORCH_VERSION) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
