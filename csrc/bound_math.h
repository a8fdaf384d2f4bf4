// The per-element bound formulas, written once for the CPU and the CUDA kernels (host and device
// functions): every CPU test then runs the very arithmetic the GPU runs. Each is the twin of a
// line in gmbound/reference/primitives.py; keep the three in step.
//
// Conventions: T is the data type (float, double), A the accumulation type (double on both
// devices). Comparisons are written so that they give the reference's results at the edges:
// relu(x) = x < 0 ? 0 : x keeps NaN (as clamp_min does); the gradient of clamp_min(x, 0) passes
// only where x > 0; the slope of lam^+ / lam^- at lam == 0 is 0.
#pragma once

#include <c10/macros/Macros.h>

// Inline everywhere: the CPU loops call these inside `#pragma omp simd` loops, which vectorise only
// once the calls are gone.
#define GMBOUND_HD C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace gmbound {
namespace math {

template <typename T>
GMBOUND_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// clamp_min(x, 0) passes the gradient g where x > 0 (not at 0).
template <typename T>
GMBOUND_HD T relu_grad(T x, T g) {
  return x > T(0) ? g : T(0);
}

// lam^- = min(lam, 0)
template <typename T>
GMBOUND_HD T neg_part(T x) {
  return x < T(0) ? x : T(0);
}

// --------------------------------------------------------------------------- centre / radius
// [l, u] <-> c = (u + l) / 2, rho = (u - l) / 2 (of relu(l), relu(u) when relu).
template <typename T>
GMBOUND_HD void centre_radius(T l, T u, bool relu_input, T& c, T& rho) {
  if (relu_input) {
    l = relu(l);
    u = relu(u);
  }
  c = (u + l) / 2;
  rho = (u - l) / 2;
}

// (g_c, g_rho) back to (g_l, g_u) through the centre / radius and the optional ReLU on read.
template <typename T>
GMBOUND_HD void centre_radius_to_bound_grads(T gc, T grho, T l, T u, bool relu_input, T& gl, T& gu) {
  T a = (gc - grho) / 2, b = (gc + grho) / 2;
  if (relu_input) {
    a = relu_grad(l, a);
    b = relu_grad(u, b);
  }
  gl = a;
  gu = b;
}

// --------------------------------------------------------------------------- ReLU relaxation
// CROWN's relaxation of leaky_relu(x) = max(x, a x) on [l, u], 0 <= a <= 1 (a = 0: ReLU), exactly
// as reference relu_relaxation. With the ReLU chord c = u / (u - l) of an unstable neuron:
//   upper line  s x + t: s = 1 (active, l >= 0), a + (1 - a) c (unstable), a (inactive, u <= 0);
//               t = -(1 - a) c l (the chord of leaky_relu through (l, a l) and (u, u))
//   lower line  alpha x: alpha = 1 when active, or unstable and the chord's slope exceeds 1/2
//               (a + (1 - a) c > 1/2, i.e. u > (2a - 1) l; for ReLU u > -l), else a.
// pos = alpha (taken by lam^+), neg = s and icp = t (taken by lam^-). At a = 0 every expression
// reduces exactly (adding 0, multiplying by 1) to ReLU's.
template <typename T>
GMBOUND_HD void relu_relaxation(T lo, T up, T a, T& pos, T& neg, T& icp) {
  const bool active = lo >= T(0);
  const bool unstable = lo < T(0) && up > T(0);
  const T chord = unstable ? up / (up - lo) : T(0);
  const T keep = T(1) - a;  // the part of the ReLU in leaky_relu(x) = a x + (1 - a) relu(x)
  neg = active ? T(1) : a + keep * chord;
  icp = -(keep * chord) * lo;
  pos = (active || (unstable && up > (T(2) * a - T(1)) * lo)) ? T(1) : a;
}

// z = lam^+ alpha + lam^- s, element by element.
template <typename T>
GMBOUND_HD T relaxed_lam(T x, T pos, T neg) {
  return x * (x > T(0) ? pos : neg);
}

// d/dlam of z g + (lam^- t) gb: lam^+ and lam^- pass no gradient at lam == 0 (nor at NaN).
// Written as one select on (x > 0 or x < 0): the nested form `x > 0 ? rp : (x < 0 ? rn : 0)` is the
// same function, but gcc 12 does not vectorise the CPU loop around it once it is inlined.
template <typename T>
GMBOUND_HD T relaxed_lam_grad(T x, T g, T gb, T pos, T neg, T icp) {
  const T rp = g * pos, rn = g * neg + gb * icp;
  const T r = x > T(0) ? rp : rn;
  return (x > T(0) || x < T(0)) ? r : T(0);
}

// Gradients of (slope s, intercept t) back to (l, u), as autograd differentiates the reference:
// only unstable neurons depend on their bounds. gs = dL/ds, gt = dL/dt (accumulated in A).
//   s = u / (u - l), t = -s l:  dL/dl = -gt s + (gs - gt l) u / (u - l)^2
//                               dL/du = (gs - gt l) / (u - l) - (gs - gt l) u / (u - l)^2
// Leaky ReLU (slope a): s = a + (1 - a) c and t = (1 - a) t_relu, so gs and gt reach ReLU's chord
// scaled by keep = 1 - a.
template <typename T, typename A>
GMBOUND_HD void relu_relaxation_grads(T lo, T up, A keep, A gs, A gt, T& gl, T& gu) {
  gs *= keep;
  gt *= keep;
  // Branch-free (the CPU loop over a block vectorises): stable neurons compute with a stand-in
  // denominator of 1 and are then given 0.
  const bool unstable = lo < T(0) && up > T(0);
  const T denom = unstable ? up - lo : T(1);
  const T chord = up / denom;
  const A g_chord = gs - gt * A(lo);
  A g_l = -gt * A(chord);
  A g_u = g_chord / A(denom);
  const A g_den = -g_chord * A(up) / (A(denom) * A(denom));
  g_u += g_den;
  g_l -= g_den;
  gl = unstable ? static_cast<T>(g_l) : T(0);
  gu = unstable ? static_cast<T>(g_u) : T(0);
}

// --------------------------------------------------------------------------- concretisation
// One term of min over a in [l, u] of lam . a: lam^+ l + lam^- u.
template <typename T>
GMBOUND_HD T concretize_term(T x, T l, T u) {
  return x * (x >= T(0) ? l : u);
}

// d/dlam of g (lam c - |lam| rho) (the same bound in centre / radius form).
template <typename T>
GMBOUND_HD T concretize_lam_grad(T g, T x, T c, T rho) {
  T sg = x < T(0) ? T(-1) : T(0);
  sg = x > T(0) ? T(1) : sg;
  return g * (c - sg * rho);
}

}  // namespace math
}  // namespace gmbound
