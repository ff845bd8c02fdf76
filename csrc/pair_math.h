// pair_math.h — the per-pair maths that the CPU kernels and the CUDA block programs both use.
//
// Plain C++17, no torch (nor any other) headers but contract.h, every function `GT_HD inline` and templated on
// the scalar type, so `nvcc -c` compiles it for the device and the CPU tests exercise the same code.
// What is here (docs/semantics.md §2 and §4):
//   * inverse distance rinv = 1/(‖p_i − p_j‖ + ε) and its gradient with respect to p_i;
//   * activations: ReLU and the exact (erf) GELU, with their derivatives as torch computes them;
//   * a branch-free exp (fast_exp), which the float GELU uses, so that loops over it vectorise;
//   * the MLP (ψω / φ) description MlpView and its packed layout.
// The CPU-only SIMD toolkit (lines, tile matmuls, the MLP on a tile of pairs, the online softmax) is
// cpu/simd_tiles.h; the CUDA block programs are cuda/block_programs.h.
//
// MLP layout. Layers [W0, b0, ..., Wn, bn] in nn.Linear layout (W: [out][in]); layer 0 has in = 1, the last
// layer out = 1; widths ≤ kMaxWidth; hidden activation after every layer but the last; optional output
// activation. The host packs them into one contiguous buffer (mlp_pack.h) and fills an MlpView with:
//   wt[l] : W transposed, [in][ld[l]], columns out..ld[l]-1 zero   (inner loop over outputs is contiguous)
//   w[l]  : W as nn.Linear, [out][ldin[l]], columns in..ldin[l]-1 zero (used by the backward input grad)
//   b[l]  : [ld[l]], zero padded
// ld[l] = out rounded up to kPad<T> (a multiple of the SIMD line, see GT_LINE_BYTES, and of kTileRows) for
// every layer except the last, where ld = 1;
// ldin[l] = 1 for layer 0 and ld[l-1] otherwise. Zero padding makes padded columns exactly 0 (act(0) = 0 for
// ReLU and GELU), so the CPU tile loops can run over padded widths without masks.
// The flat gradient buffer holds, per layer, dWt[ldin[l]][ld[l]] at gwt[l] (transposed like wt) and db[ld[l]]
// at gb[l]; the host transposes dWt back to [out][in] when unpacking.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "contract.h"

#if defined(__CUDACC__)
#define GT_HD __host__ __device__
#else
#define GT_HD
#endif

// Small elementwise functions called inside vectorised loops must be inlined (a call blocks vectorisation).
#if defined(__CUDACC__)
#define GT_FORCE_INLINE __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define GT_FORCE_INLINE inline __attribute__((always_inline))
#else
#define GT_FORCE_INLINE inline
#endif

namespace gt {

// MLP layout granules (see the header comment): the packing (mlp_pack.h) pads widths to kPad<T>.
constexpr int kTileRows = 8;            // pairs per register block in the tile matmuls

// Bytes of a "line", the host SIMD width the tile loops are written for: 64 with AVX-512, 32 with AVX,
// 16 otherwise (SSE2, NEON); 64 under nvcc (where lines are plain arrays).
#if defined(__CUDACC__) || defined(__AVX512F__)
#define GT_LINE_BYTES 64
#elif defined(__AVX__)
#define GT_LINE_BYTES 32
#else
#define GT_LINE_BYTES 16
#endif

// Elements of T in one line: the column block of the tiles.
template <class T>
struct VecWidth {
  static constexpr int value = GT_LINE_BYTES / static_cast<int>(sizeof(T));
};
template <class T>
constexpr int kVec = VecWidth<T>::value;
// Padding granule of the MLP widths (a multiple of the line and of kTileRows).
template <class T>
constexpr int kPad = kVec<T> > kTileRows ? kVec<T> : kTileRows;

GT_HD inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------
// Scalar maths with the float / double overloads resolved explicitly (host and device).
GT_HD inline float gt_exp(float x) { return expf(x); }
GT_HD inline double gt_exp(double x) { return exp(x); }
GT_HD inline float gt_log(float x) { return logf(x); }
GT_HD inline double gt_log(double x) { return log(x); }
GT_HD inline float gt_sqrt(float x) { return sqrtf(x); }
GT_HD inline double gt_sqrt(double x) { return sqrt(x); }
template <class T>
GT_HD inline T gt_max(T a, T b) { return a > b ? a : b; }
template <class T>
GT_HD inline T neg_inf() { return -static_cast<T>(HUGE_VAL); }

template <class To, class From>
GT_HD inline To bit_cast(From f) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To t;
  memcpy(&t, &f, sizeof(To));
  return t;
}

// exp without branches or calls, so that loops over it vectorise: Cody–Waite reduction x = k ln2 + r,
// |r| <= ln2/2, Taylor polynomial (degree 13 for double, 8 for float), 2^k built in the exponent bits.
// Max relative error about 1.5 ulp (double 3e-16, float 8e-8) over the whole range; exp(x) = 0 below
// -708 (double) / -87 (float), i.e. no denormals; exp(-inf) = 0.
GT_HD GT_FORCE_INLINE double fast_exp(double x) {
  const double xc = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double kd = (xc * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;  // round(x/ln2)
  const double r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const double scale = bit_cast<double>(static_cast<uint64_t>(static_cast<int64_t>(kd) + 1023) << 52);
  return x < -708.0 ? 0.0 : p * scale;
}
GT_HD GT_FORCE_INLINE float fast_exp(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float kd = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x/ln2)
  const float r = (xc - kd * 0.693359375f) - kd * -2.12194440e-4f;
  float p = 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(kd) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// ---------------------------------------------------------------------------------------------------------
// erf for the GELU. float: branch-free, so loops over it vectorise: erf(x) = x·P(x²) for |x| < 1 and
// 1 − exp(−x²)·Q(|x|) above (Q fits erfc·exp(x²) on [1, 4]; erf = 1 in float beyond 4), Chebyshev fits,
// max abs error 1.3e-7 (2 ulp). double: the C library's erf (double serves exactness checks).
GT_HD GT_FORCE_INLINE float gelu_erf(float x) {
  const float a = fabsf(x);
  const float u = a * a;
  float pa = 7.88250044e-05f;
  pa = pa * u - 0.000801885901f;
  pa = pa * u + 0.00518931281f;
  pa = pa * u - 0.0268543295f;
  pa = pa * u + 0.112835975f;
  pa = pa * u - 0.376126269f;
  pa = pa * u + 1.12837917f;
  const float ra = a * pa;
  const float ac = a < 4.0f ? a : 4.0f;
  const float t = (ac - 2.5f) * (1.0f / 1.5f);
  float q = 9.64057038e-05f;
  q = q * t - 0.000245505769f;
  q = q * t + 0.000367865998f;
  q = q * t - 0.000915557422f;
  q = q * t + 0.00242588718f;
  q = q * t - 0.00561176696f;
  q = q * t + 0.012484035f;
  q = q * t - 0.0269977904f;
  q = q * t + 0.0561109585f;
  q = q * t - 0.111521401f;
  q = q * t + 0.210806358f;
  const float rb = 1.0f - fast_exp(-ac * ac) * q;
  const float r = a < 1.0f ? ra : rb;
  return x < 0.0f ? -r : r;
}
GT_HD inline double gelu_erf(double x) { return erf(x); }

// Activations (torch semantics: relu'(0) = 0, relu(NaN) = NaN; GELU exact, derivative cdf + x·pdf).
// relu is written `x < 0 ? 0 : x`, not `x > 0 ? x : 0` (or max(x, 0)): the latter maps NaN to 0, so NaN
// positions (validate=False) would give finite-looking attention outputs where the reference gives NaN.
template <class T>
GT_HD GT_FORCE_INLINE T relu(T x) { return x < T(0) ? T(0) : x; }
template <class T>
GT_HD GT_FORCE_INLINE T relu_grad(T x) { return x > T(0) ? T(1) : T(0); }

template <class T>
GT_HD GT_FORCE_INLINE T gelu(T x) {
  return x * T(0.5) * (T(1) + gelu_erf(x * T(0.70710678118654752440)));
}
template <class T>
GT_HD GT_FORCE_INLINE T gelu_grad(T x) {
  const T cdf = T(0.5) * (T(1) + gelu_erf(x * T(0.70710678118654752440)));
  const T pdf = T(0.39894228040143267794) * fast_exp(T(-0.5) * x * x);  // 1/sqrt(2π) · exp(−x²/2)
  return cdf + x * pdf;
}
template <class T>
GT_HD inline T activate(int act, T x) {
  return act == kActRelu ? relu(x) : (act == kActGelu ? gelu(x) : x);
}
template <class T>
GT_HD inline T activate_grad(int act, T x) {
  return act == kActRelu ? relu_grad(x) : (act == kActGelu ? gelu_grad(x) : T(1));
}

// ---------------------------------------------------------------------------------------------------------
// Inverse distance. Returns rinv = 1/(r + eps) in the compute type T and writes d rinv / d p_i to grad_i
// (d/d p_j = −grad_i). Positions and the geometry are in P (float64 by default: the kernels take float64
// positions, so fragments placed 1e4 Å apart keep their intra-molecule distances to float64 precision).
// At r = 0 the gradient is 0, as torch.linalg.vector_norm's backward gives.
template <class T, class P = double>
GT_HD inline T inverse_distance(const P* pi, const P* pj, P* grad_i) {
  const P dx = pi[0] - pj[0], dy = pi[1] - pj[1], dz = pi[2] - pj[2];
  const P r = gt_sqrt(dx * dx + dy * dy + dz * dz);
  // A non-finite r (a NaN or Inf coordinate, validate=False) gives rinv NaN, never 1/Inf = 0: the molecule's
  // outputs are then NaN, as the reference's (docs/semantics.md §2).
  const P rinv = r < P(INFINITY) ? P(1) / (r + P(kDistanceEps)) : P(NAN);
  if (grad_i != nullptr) {
    const P c = r > P(0) ? -rinv * rinv / r : P(0);
    grad_i[0] = c * dx;
    grad_i[1] = c * dy;
    grad_i[2] = c * dz;
  }
  return static_cast<T>(rinv);
}

template <class T, class P = double>
GT_HD inline T inverse_distance(const P* pi, const P* pj) {
  return inverse_distance<T, P>(pi, pj, static_cast<P*>(nullptr));
}

// ---------------------------------------------------------------------------------------------------------
// MLP description (pointers into a packed parameter buffer, see the header comment).
template <class T>
struct MlpView {
  int n_layers = 0;
  int hidden_act = kActRelu;
  int out_act = kActNone;
  int in[kMaxLayers] = {};
  int out[kMaxLayers] = {};
  int ld[kMaxLayers] = {};
  int ldin[kMaxLayers] = {};
  const T* wt[kMaxLayers] = {};
  const T* w[kMaxLayers] = {};
  const T* b[kMaxLayers] = {};
  int64_t gwt[kMaxLayers] = {};
  int64_t gb[kMaxLayers] = {};
  int64_t grad_size = 0;  // elements of the flat gradient buffer
  int max_ld = 0;         // max ld over the hidden (non-last) layers, ≥ kPad<T>
};

}  // namespace gt
