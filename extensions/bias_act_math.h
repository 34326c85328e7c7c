// Activation functions of bias_act and their first and second derivatives, shared by the CPU (C++) and
// CUDA kernels so both compute the same numbers. v is the pre-activation value x + b.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define STUDIO_HD __host__ __device__ __forceinline__
#else
#define STUDIO_HD inline
#endif

namespace studio {

// The ids are fixed: engine/ops/fused.py passes them.
enum Act : int { LINEAR = 0, RELU = 1, LRELU = 2, TANH = 3, SIGMOID = 4, ELU = 5, SELU = 6, SOFTPLUS = 7, SWISH = 8 };

// SELU constants (Klambauer et al. 2017), as torch.nn.functional.selu uses them.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// torch.nn.functional.softplus returns x itself above this input (beta = 1).
constexpr double kSoftplusThreshold = 20.0;

// The float overloads on both sides (a bare exp(float) on the host would compute in double).
#if defined(__CUDA_ARCH__)
template <typename T> STUDIO_HD T exp_(T v) { return ::exp(v); }
template <typename T> STUDIO_HD T tanh_(T v) { return ::tanh(v); }
template <typename T> STUDIO_HD T log1p_(T v) { return ::log1p(v); }
#else
template <typename T> STUDIO_HD T exp_(T v) { return std::exp(v); }
template <typename T> STUDIO_HD T tanh_(T v) { return std::tanh(v); }
template <typename T> STUDIO_HD T log1p_(T v) { return std::log1p(v); }
#endif
template <typename T> STUDIO_HD T sigmoid_(T v) { return T(1) / (T(1) + exp_(-v)); }

// act(v)
template <int A, typename T> STUDIO_HD T act_f(T v, T alpha) {
  if (A == LINEAR) return v;
  if (A == RELU) return v > T(0) ? v : T(0);
  if (A == LRELU) return v > T(0) ? v : v * alpha;
  if (A == TANH) return tanh_(v);
  if (A == SIGMOID) return sigmoid_(v);
  if (A == ELU) return v > T(0) ? v : exp_(v) - T(1);
  if (A == SELU) return v > T(0) ? T(kSeluScale) * v : T(kSeluScale * kSeluAlpha) * (exp_(v) - T(1));
  if (A == SOFTPLUS) return v > T(kSoftplusThreshold) ? v : log1p_(exp_(v));
  if (A == SWISH) return v * sigmoid_(v);
  return v;
}

// act'(v)
template <int A, typename T> STUDIO_HD T act_d1(T v, T alpha) {
  if (A == LINEAR) return T(1);
  if (A == RELU) return v > T(0) ? T(1) : T(0);
  if (A == LRELU) return v > T(0) ? T(1) : alpha;
  if (A == TANH) { T t = tanh_(v); return T(1) - t * t; }
  if (A == SIGMOID) { T s = sigmoid_(v); return s * (T(1) - s); }
  if (A == ELU) return v > T(0) ? T(1) : exp_(v);
  if (A == SELU) return v > T(0) ? T(kSeluScale) : T(kSeluScale * kSeluAlpha) * exp_(v);
  if (A == SOFTPLUS) return v > T(kSoftplusThreshold) ? T(1) : sigmoid_(v);
  if (A == SWISH) { T s = sigmoid_(v); return s * (T(1) + v * (T(1) - s)); }
  return T(1);
}

// act''(v); zero for the piecewise linear activations.
template <int A, typename T> STUDIO_HD T act_d2(T v, T alpha) {
  if (A == TANH) { T t = tanh_(v); return T(-2) * t * (T(1) - t * t); }
  if (A == SIGMOID) { T s = sigmoid_(v); return s * (T(1) - s) * (T(1) - T(2) * s); }
  if (A == ELU) return v > T(0) ? T(0) : exp_(v);
  if (A == SELU) return v > T(0) ? T(0) : T(kSeluScale * kSeluAlpha) * exp_(v);
  if (A == SOFTPLUS) { if (v > T(kSoftplusThreshold)) return T(0); T s = sigmoid_(v); return s * (T(1) - s); }
  if (A == SWISH) { T s = sigmoid_(v); return s * (T(1) - s) * (T(2) + v * (T(1) - T(2) * s)); }
  return T(0);
}

// Derivative of the piecewise linear activations read from the saved output y = act(v) * gain (gain > 0,
// alpha >= 0, so y > 0 exactly when v > 0); the pre-activation need not be kept for these.
template <int A, typename T> STUDIO_HD T act_d1_from_y(T y, T alpha) {
  if (A == RELU) return y > T(0) ? T(1) : T(0);
  if (A == LRELU) return y > T(0) ? T(1) : alpha;
  return T(1);
}

// Clamp that lets NaN through, as torch.clamp does.
template <typename T> STUDIO_HD T clamp_(T v, T c) { return v < -c ? -c : (v > c ? c : v); }

}  // namespace studio
