// simd_tiles.h — the CPU kernels' SIMD toolkit, on top of the shared per-pair maths (../pair_math.h):
//   * loop hints (omp simd, unrolling) and elementwise activations over n values;
//   * the per-pair MLP (φ(0), the encoding's self term): forward keeping the pre-activations, backward
//     accumulating parameter gradients into the flat buffer of MlpView and returning d out / d input;
//   * lines (one SIMD register of kVec<T> values) and small register-blocked matmuls on tiles of NP pairs;
//   * the MLP on a SIMD tile of NP pairs (mlp_forward_simd / mlp_backward_simd): one thread, layer by layer as
//     tile matmuls whose inner loop over outputs is contiguous (the CUDA block programs have their own,
//     block-wide MLP, cuda/block_programs.h mlp_forward_block);
//   * the online softmax with un-gated statistics (running max m, running sum l) and a gated numerator
//     acc = Σ exp(S − m)·g·v.
// Plain C++17 with no torch headers; compiled by the host compiler only.
#pragma once

#include <utility>

#include "../pair_math.h"

// Loop hints. GT_SIMD: `omp simd` (iterations independent, vectorise); GT_SIMD_REDUCE(a, b): the same for
// a loop whose sums a, b may be reassociated (vectorised reduction). Active with OpenMP (the CPU build uses
// -fopenmp), empty under nvcc. GT_UNROLL: full unrolling of short constant loops.
#define GT_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) && !defined(__CUDACC__)
#define GT_SIMD _Pragma("omp simd")
#define GT_SIMD_REDUCE(...) GT_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define GT_SIMD
#define GT_SIMD_REDUCE(...)
#endif
#if defined(__CUDACC__) || defined(__clang__)
#define GT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define GT_UNROLL _Pragma("GCC unroll 16")
#else
#define GT_UNROLL
#endif

namespace gt {

// Elementwise over n values, one loop per activation so that each vectorises.
template <class T>
GT_HD inline void activate_n(int act, const T* z, T* a, int n) {
  if (act == kActRelu) {
    GT_SIMD
    for (int e = 0; e < n; ++e) a[e] = relu(z[e]);
  } else if (act == kActGelu) {
    GT_SIMD
    for (int e = 0; e < n; ++e) a[e] = gelu(z[e]);
  } else {
    for (int e = 0; e < n; ++e) a[e] = z[e];
  }
}
// d[e] *= act'(z[e])
template <class T>
GT_HD inline void mul_activate_grad_n(int act, const T* z, T* d, int n) {
  if (act == kActRelu) {
    GT_SIMD
    for (int e = 0; e < n; ++e) d[e] = z[e] > T(0) ? d[e] : T(0);
  } else if (act == kActGelu) {
    GT_SIMD
    for (int e = 0; e < n; ++e) d[e] *= gelu_grad(z[e]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per-pair MLP. Scratch: z and a are [n_layers][kMaxWidth] (pre- and post-activations).
// Returns the output after the optional output activation.
template <class T>
GT_HD inline T mlp_forward_pair(const MlpView<T>& m, T x, T* z, T* a) {
  const int L = m.n_layers;
  for (int l = 0; l < L; ++l) {
    const int n_out = m.out[l];
    const int ld = m.ld[l];
    T* zl = z + l * kMaxWidth;
    T* al = a + l * kMaxWidth;
    const T* wt = m.wt[l];
    const T* bl = m.b[l];
    if (l == 0) {
      GT_SIMD
      for (int o = 0; o < n_out; ++o) zl[o] = bl[o] + x * wt[o];
    } else {
      const T* ap = a + (l - 1) * kMaxWidth;
      for (int o = 0; o < n_out; ++o) zl[o] = bl[o];
      for (int i = 0; i < m.in[l]; ++i) {
        const T ai = ap[i];
        const T* wrow = wt + static_cast<int64_t>(i) * ld;
        GT_SIMD
        for (int o = 0; o < n_out; ++o) zl[o] += ai * wrow[o];
      }
    }
    activate_n((l < L - 1) ? m.hidden_act : m.out_act, zl, al, n_out);
  }
  return a[(L - 1) * kMaxWidth];
}

// Backward of mlp_forward_pair for the upstream gradient dy: accumulates dy·∂out/∂θ into grad (flat layout
// of MlpView) and returns d out / d x · dy. dz is scratch of 2·kMaxWidth.
template <class T>
GT_HD inline T mlp_backward_pair(const MlpView<T>& m, T x, const T* z, const T* a, T dy, T* grad, T* dz) {
  const int L = m.n_layers;
  T* cur = dz;               // dL/dz of layer l
  T* prev = dz + kMaxWidth;  // dL/dz of layer l-1
  cur[0] = dy * activate_grad(m.out_act, z[(L - 1) * kMaxWidth]);
  T dx = T(0);
  for (int l = L - 1; l >= 0; --l) {
    const int n_out = m.out[l];
    const int ld = m.ld[l];
    T* gw = grad + m.gwt[l];
    T* gbias = grad + m.gb[l];
    GT_SIMD
    for (int o = 0; o < n_out; ++o) gbias[o] += cur[o];
    if (l == 0) {
      GT_SIMD
      for (int o = 0; o < n_out; ++o) gw[o] += x * cur[o];
      const T* wt = m.wt[0];
      for (int o = 0; o < n_out; ++o) dx += wt[o] * cur[o];
    } else {
      const int n_in = m.in[l];
      const T* ap = a + (l - 1) * kMaxWidth;
      for (int i = 0; i < n_in; ++i) {
        const T ai = ap[i];
        T* grow = gw + static_cast<int64_t>(i) * ld;
        GT_SIMD
        for (int o = 0; o < n_out; ++o) grow[o] += ai * cur[o];
      }
      // d a_{l-1} = Wᵀ dz_l, then through the hidden activation.
      const T* w = m.w[l];
      const int ldin = m.ldin[l];
      for (int i = 0; i < n_in; ++i) prev[i] = T(0);
      for (int o = 0; o < n_out; ++o) {
        const T co = cur[o];
        const T* wrow = w + static_cast<int64_t>(o) * ldin;
        GT_SIMD
        for (int i = 0; i < n_in; ++i) prev[i] += co * wrow[i];
      }
      mul_activate_grad_n(m.hidden_act, z + (l - 1) * kMaxWidth, prev, n_in);
      T* t = cur;
      cur = prev;
      prev = t;
    }
  }
  return dx;
}

// ---------------------------------------------------------------------------------------------------------
// Lines: kVec<T> consecutive values (GT_LINE_BYTES). On the host with GCC/Clang they are native vectors (one
// SIMD register), elsewhere (or with GT_NO_VECTOR_LINES, used to test that path on the host) a plain array.
#if !defined(__CUDACC__) && !defined(GT_NO_VECTOR_LINES) && (defined(__GNUC__) || defined(__clang__))
#define GT_VECTOR_LINES 1
template <class T>
struct LineType {
  typedef T type __attribute__((vector_size(GT_LINE_BYTES), aligned(sizeof(T)), may_alias));
};
template <class T>
using Line = typename LineType<T>::type;
template <class T, int N>
struct VecN {
  typedef T type __attribute__((vector_size(N * sizeof(T)), aligned(sizeof(T)), may_alias));
};
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define GT_HAVE_SHUFFLEVECTOR 1
#endif
#endif
template <class T, int N, int... I>
GT_FORCE_INLINE typename VecN<T, N / 2>::type vec_half_sum(const typename VecN<T, N>::type& v,
                                                           std::integer_sequence<int, I...>) {
#if defined(GT_HAVE_SHUFFLEVECTOR)
  return __builtin_shufflevector(v, v, I...) + __builtin_shufflevector(v, v, (I + N / 2)...);
#else
  typename VecN<T, N / 2>::type lo, hi;
  memcpy(&lo, &v, sizeof(lo));
  memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return lo + hi;
#endif
}
// Sum of the N lanes, pairwise: add the two halves until one value is left.
template <class T, int N>
GT_FORCE_INLINE T vec_sum(const typename VecN<T, N>::type& v) {
  if constexpr (N == 2) {
    return v[0] + v[1];
  } else {
    return vec_sum<T, N / 2>(vec_half_sum<T, N>(v, std::make_integer_sequence<int, N / 2>()));
  }
}
template <class T>
inline Line<T> line_zero() { return Line<T>{}; }
template <class T>
inline Line<T> line_load(const T* p) { return *reinterpret_cast<const Line<T>*>(p); }
template <class T>
inline void line_store(T* p, const Line<T>& v) { *reinterpret_cast<Line<T>*>(p) = v; }
template <class T>
inline Line<T> line_fma(const Line<T>& acc, T s, const Line<T>& w) { return acc + s * w; }
template <class T>
inline Line<T> line_fma(const Line<T>& acc, const Line<T>& a, const Line<T>& w) { return acc + a * w; }
template <class T>
inline Line<T> line_add(const Line<T>& a, const Line<T>& b) { return a + b; }
template <class T>
inline Line<T> line_scale(T s, const Line<T>& w) { return s * w; }
template <class T>
inline Line<T> line_relu(const Line<T>& v) { return v < T(0) ? T(0) : v; }  // NaN stays NaN, as relu()
template <class T>  // d where a > 0, else 0
inline Line<T> line_mask_pos(const Line<T>& d, const Line<T>& a) { return a > T(0) ? d : T(0); }
template <class T>
GT_FORCE_INLINE T line_sum(const Line<T>& v) {  // pairwise: add the two halves until one value is left
  return vec_sum<T, kVec<T>>(v);
}
#else
template <class T>
struct Line {
  T v[kVec<T>];
};
template <class T>
GT_HD inline Line<T> line_zero() {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = T(0);
  return r;
}
template <class T>
GT_HD inline Line<T> line_load(const T* p) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = p[c];
  return r;
}
template <class T>
GT_HD inline void line_store(T* p, const Line<T>& v) {
  for (int c = 0; c < kVec<T>; ++c) p[c] = v.v[c];
}
template <class T>
GT_HD inline Line<T> line_fma(const Line<T>& acc, T s, const Line<T>& w) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = acc.v[c] + s * w.v[c];
  return r;
}
template <class T>
GT_HD inline Line<T> line_fma(const Line<T>& acc, const Line<T>& a, const Line<T>& w) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = acc.v[c] + a.v[c] * w.v[c];
  return r;
}
template <class T>
GT_HD inline Line<T> line_add(const Line<T>& a, const Line<T>& b) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = a.v[c] + b.v[c];
  return r;
}
template <class T>
GT_HD inline Line<T> line_scale(T s, const Line<T>& w) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = s * w.v[c];
  return r;
}
template <class T>
GT_HD inline Line<T> line_relu(const Line<T>& a) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = a.v[c] < T(0) ? T(0) : a.v[c];  // NaN stays NaN
  return r;
}
template <class T>
GT_HD inline Line<T> line_mask_pos(const Line<T>& d, const Line<T>& a) {
  Line<T> r;
  for (int c = 0; c < kVec<T>; ++c) r.v[c] = a.v[c] > T(0) ? d.v[c] : T(0);
  return r;
}
template <class T>
GT_HD inline T line_sum(const Line<T>& v) {
  T s = T(0);
  for (int c = 0; c < kVec<T>; ++c) s += v.v[c];
  return s;
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Tiles of NP pairs (NP a multiple of kTileRows). Small dense products whose inner loop runs over
// contiguous, zero-padded columns, in register blocks of kTileRows pairs × NV lines.

// One register block of Y[RB][NV lines at o0] = X[RB][first n_in columns] · M[n_in][ldy] (+ bias),
// stored through ReLU when RELU.
template <class T, int NV, bool RELU>
GT_HD inline void matmul_block(const T* X, int ldx, int n_in, const T* M, int ldy, const T* bias, T* Y, int o0) {
  constexpr int C = kVec<T>;
  constexpr int RB = kTileRows;
  Line<T> acc[RB][NV];
  GT_UNROLL
  for (int v = 0; v < NV; ++v) {
    const Line<T> b = bias != nullptr ? line_load<T>(bias + o0 + v * C) : line_zero<T>();
    GT_UNROLL
    for (int r = 0; r < RB; ++r) acc[r][v] = b;
  }
  for (int i = 0; i < n_in; ++i) {
    Line<T> w[NV];
    GT_UNROLL
    for (int v = 0; v < NV; ++v) w[v] = line_load<T>(M + static_cast<int64_t>(i) * ldy + o0 + v * C);
    GT_UNROLL
    for (int r = 0; r < RB; ++r) {
      const T xv = X[static_cast<int64_t>(r) * ldx + i];
      GT_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = line_fma<T>(acc[r][v], xv, w[v]);
    }
  }
  GT_UNROLL
  for (int r = 0; r < RB; ++r) {
    GT_UNROLL
    for (int v = 0; v < NV; ++v) {
      line_store<T>(Y + static_cast<int64_t>(r) * ldy + o0 + v * C, RELU ? line_relu<T>(acc[r][v]) : acc[r][v]);
    }
  }
}

// Y[NP][ldy] = X[NP][first n_in columns] · M[n_in][ldy] (+ bias[ldy]) (through ReLU when relu);
// ldy a multiple of kVec<T>.
template <class T, int NP>
GT_HD inline void tile_matmul(const T* X, int ldx, int n_in, const T* M, int ldy, const T* bias, T* Y,
                              bool relu = false) {
  constexpr int C = kVec<T>;
  constexpr int RB = kTileRows;
  for (int p0 = 0; p0 < NP; p0 += RB) {
    const T* Xp = X + static_cast<int64_t>(p0) * ldx;
    T* Yp = Y + static_cast<int64_t>(p0) * ldy;
    int o0 = 0;
    if (relu) {
      for (; o0 + 2 * C <= ldy; o0 += 2 * C) matmul_block<T, 2, true>(Xp, ldx, n_in, M, ldy, bias, Yp, o0);
      if (o0 < ldy) matmul_block<T, 1, true>(Xp, ldx, n_in, M, ldy, bias, Yp, o0);
    } else {
      for (; o0 + 2 * C <= ldy; o0 += 2 * C) matmul_block<T, 2, false>(Xp, ldx, n_in, M, ldy, bias, Yp, o0);
      if (o0 < ldy) matmul_block<T, 1, false>(Xp, ldx, n_in, M, ldy, bias, Yp, o0);
    }
  }
}

// One register block of G[i0 .. i0+RB][NV lines at o0] += Σ_p X[p][i0 + r] · dY[p][o0 ..].
template <class T, int NP, int NV>
GT_HD inline void wgrad_block(const T* X, int ldx, int i0, const T* dY, int ldy, int o0, T* G) {
  constexpr int C = kVec<T>;
  constexpr int RB = kTileRows;
  Line<T> acc[RB][NV];
  GT_UNROLL
  for (int r = 0; r < RB; ++r) {
    GT_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = line_zero<T>();
  }
  for (int p = 0; p < NP; ++p) {
    Line<T> d[NV];
    GT_UNROLL
    for (int v = 0; v < NV; ++v) d[v] = line_load<T>(dY + static_cast<int64_t>(p) * ldy + o0 + v * C);
    const T* xrow = X + static_cast<int64_t>(p) * ldx + i0;
    GT_UNROLL
    for (int r = 0; r < RB; ++r) {
      const T xv = xrow[r];
      GT_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = line_fma<T>(acc[r][v], xv, d[v]);
    }
  }
  GT_UNROLL
  for (int r = 0; r < RB; ++r) {
    GT_UNROLL
    for (int v = 0; v < NV; ++v) {
      T* g = G + static_cast<int64_t>(i0 + r) * ldy + o0 + v * C;
      line_store<T>(g, line_add<T>(line_load<T>(g), acc[r][v]));
    }
  }
}

// G[n_rows][ldy] += Xᵀ · dY, X: [NP][ldx] (columns 0..n_rows-1 used), dY: [NP][ldy];
// n_rows a multiple of kTileRows not above ldx, ldy a multiple of kVec<T>.
template <class T, int NP>
GT_HD inline void tile_wgrad(const T* X, int ldx, int n_rows, const T* dY, int ldy, T* G) {
  constexpr int C = kVec<T>;
  for (int i0 = 0; i0 < n_rows; i0 += kTileRows) {
    int o0 = 0;
    for (; o0 + 2 * C <= ldy; o0 += 2 * C) wgrad_block<T, NP, 2>(X, ldx, i0, dY, ldy, o0, G);
    if (o0 < ldy) wgrad_block<T, NP, 1>(X, ldx, i0, dY, ldy, o0, G);
  }
}

// Workspace of the tile forward: per hidden layer l < L-1, Z_l and A_l of [NP][ld[l]] (Z_l is not written
// for ReLU: the backward takes the ReLU mask from A_l > 0); then the last layer's pre-activation [NP].
template <class T, int NP>
GT_HD inline int64_t tile_ws_offset(const MlpView<T>& m, int l) {
  int64_t off = 0;
  for (int k = 0; k < l && k < m.n_layers - 1; ++k) off += 2 * static_cast<int64_t>(NP) * m.ld[k];
  return off;
}
template <class T, int NP>
GT_HD inline int64_t tile_ws_size(const MlpView<T>& m) {
  return tile_ws_offset<T, NP>(m, m.n_layers - 1) + NP;
}
// Workspace of the tile backward: two [NP][max_ld] buffers.
template <class T, int NP>
GT_HD inline int64_t tile_bws_size(const MlpView<T>& m) {
  return 2 * static_cast<int64_t>(NP) * m.max_ld;
}

// MLP forward on a SIMD tile of NP pairs, by one thread (the CUDA programs' mlp_forward_block is block-wide):
// x[NP] inputs, y[NP] outputs (after the output activation); ws keeps the activations for mlp_backward_simd.
template <class T, int NP>
GT_HD inline void mlp_forward_simd(const MlpView<T>& m, const T* x, T* ws, T* y) {
  constexpr int C = kVec<T>;
  const int L = m.n_layers;
  const bool relu = (m.hidden_act == kActRelu);
  T* zlast = ws + tile_ws_offset<T, NP>(m, L - 1);
  if (L == 1) {
    const T w0 = m.wt[0][0], b0 = m.b[0][0];
    for (int p = 0; p < NP; ++p) zlast[p] = b0 + x[p] * w0;
  } else {
    // Layer 0 (in = 1): z = b + x·w, a rank-one update.
    {
      const int ld = m.ld[0];
      T* Z = ws;
      T* A = ws + static_cast<int64_t>(NP) * ld;
      for (int p = 0; p < NP; ++p) {
        const T xp = x[p];
        T* zr = Z + static_cast<int64_t>(p) * ld;
        T* ar = A + static_cast<int64_t>(p) * ld;
        for (int o = 0; o < ld; o += C) {
          const Line<T> z = line_fma<T>(line_load<T>(m.b[0] + o), xp, line_load<T>(m.wt[0] + o));
          if (relu) {
            line_store<T>(ar + o, line_relu<T>(z));
          } else {
            line_store<T>(zr + o, z);
          }
        }
        if (!relu) activate_n(m.hidden_act, zr, ar, ld);
      }
    }
    // Hidden layers.
    for (int l = 1; l < L - 1; ++l) {
      const int ld = m.ld[l];
      const int ldp = m.ld[l - 1];
      const T* Ap = ws + tile_ws_offset<T, NP>(m, l - 1) + static_cast<int64_t>(NP) * ldp;
      T* Z = ws + tile_ws_offset<T, NP>(m, l);
      T* A = Z + static_cast<int64_t>(NP) * ld;
      if (relu) {
        tile_matmul<T, NP>(Ap, ldp, m.in[l], m.wt[l], ld, m.b[l], A, true);
      } else {
        tile_matmul<T, NP>(Ap, ldp, m.in[l], m.wt[l], ld, m.b[l], Z, false);
        activate_n(m.hidden_act, Z, A, NP * ld);
      }
    }
    // Last layer (out = 1): a dot product over the (zero-padded) input.
    {
      const int ldp = m.ld[L - 2];
      const T* Ap = ws + tile_ws_offset<T, NP>(m, L - 2) + static_cast<int64_t>(NP) * ldp;
      const T* w = m.w[L - 1];
      const T bl = m.b[L - 1][0];
      for (int p = 0; p < NP; ++p) {
        const T* ar = Ap + static_cast<int64_t>(p) * ldp;
        Line<T> s = line_zero<T>();
        for (int i = 0; i < ldp; i += C) s = line_fma<T>(s, line_load<T>(ar + i), line_load<T>(w + i));
        zlast[p] = bl + line_sum<T>(s);
      }
    }
  }
  for (int p = 0; p < NP; ++p) y[p] = activate(m.out_act, zlast[p]);
}

// Backward of mlp_forward_simd: dy[NP] upstream gradients; accumulates into grad (flat layout) and writes
// dx[NP] = dy · d out/d x. bws: tile_bws_size elements of scratch.
template <class T, int NP>
GT_HD inline void mlp_backward_simd(const MlpView<T>& m, const T* x, const T* ws, const T* dy, T* grad, T* bws,
                                    T* dx) {
  constexpr int C = kVec<T>;
  const int L = m.n_layers;
  const bool relu = (m.hidden_act == kActRelu);
  const T* zlast = ws + tile_ws_offset<T, NP>(m, L - 1);
  T dzl[NP];
  for (int p = 0; p < NP; ++p) dzl[p] = dy[p] * activate_grad(m.out_act, zlast[p]);
  if (L == 1) {
    const T w0 = m.wt[0][0];
    T sb = T(0), sw = T(0);
    for (int p = 0; p < NP; ++p) {
      sb += dzl[p];
      sw += dzl[p] * x[p];
      dx[p] = dzl[p] * w0;
    }
    grad[m.gb[0]] += sb;
    grad[m.gwt[0]] += sw;
    return;
  }
  T* dcur = bws;                                          // dL/da, then dL/dz, of the current layer
  T* dnext = bws + static_cast<int64_t>(NP) * m.max_ld;  // of the layer below
  // Last layer: z = b + a·w.
  {
    const int ldp = m.ld[L - 2];
    const T* Ap = ws + tile_ws_offset<T, NP>(m, L - 2) + static_cast<int64_t>(NP) * ldp;
    const T* w = m.w[L - 1];
    T* gw = grad + m.gwt[L - 1];
    T sb = T(0);
    for (int i = 0; i < ldp; i += C) {
      const Line<T> wl = line_load<T>(w + i);
      Line<T> g = line_zero<T>();
      for (int p = 0; p < NP; ++p) {
        const T d = dzl[p];
        g = line_fma<T>(g, d, line_load<T>(Ap + static_cast<int64_t>(p) * ldp + i));
        line_store<T>(dcur + static_cast<int64_t>(p) * ldp + i, line_scale<T>(d, wl));
      }
      line_store<T>(gw + i, line_add<T>(line_load<T>(gw + i), g));
    }
    for (int p = 0; p < NP; ++p) sb += dzl[p];
    grad[m.gb[L - 1]] += sb;
  }
  // Hidden layers l = L-2 .. 0: dcur holds dL/da_l [NP][ld[l]].
  for (int l = L - 2; l >= 0; --l) {
    const int ld = m.ld[l];
    const T* Z = ws + tile_ws_offset<T, NP>(m, l);
    const T* A = Z + static_cast<int64_t>(NP) * ld;
    const int64_t n = static_cast<int64_t>(NP) * ld;
    if (relu) {
      for (int64_t e = 0; e < n; e += C) {
        line_store<T>(dcur + e, line_mask_pos<T>(line_load<T>(dcur + e), line_load<T>(A + e)));
      }
    } else {
      mul_activate_grad_n(m.hidden_act, Z, dcur, static_cast<int>(n));
    }
    // bias gradient
    T* gbias = grad + m.gb[l];
    for (int o = 0; o < ld; o += C) {
      Line<T> g = line_zero<T>();
      for (int p = 0; p < NP; ++p) g = line_add<T>(g, line_load<T>(dcur + static_cast<int64_t>(p) * ld + o));
      line_store<T>(gbias + o, line_add<T>(line_load<T>(gbias + o), g));
    }
    if (l == 0) {
      T* gw = grad + m.gwt[0];
      const T* wt = m.wt[0];
      for (int o = 0; o < ld; o += C) {
        Line<T> g = line_zero<T>();
        for (int p = 0; p < NP; ++p) g = line_fma<T>(g, x[p], line_load<T>(dcur + static_cast<int64_t>(p) * ld + o));
        line_store<T>(gw + o, line_add<T>(line_load<T>(gw + o), g));
      }
      for (int p = 0; p < NP; ++p) {
        const T* dr = dcur + static_cast<int64_t>(p) * ld;
        Line<T> s = line_zero<T>();
        for (int o = 0; o < ld; o += C) s = line_fma<T>(s, line_load<T>(wt + o), line_load<T>(dr + o));
        dx[p] = line_sum<T>(s);
      }
    } else {
      const int ldp = m.ld[l - 1];
      const T* Ap = ws + tile_ws_offset<T, NP>(m, l - 1) + static_cast<int64_t>(NP) * ldp;
      tile_wgrad<T, NP>(Ap, ldp, round_up(m.in[l], kTileRows), dcur, ld, grad + m.gwt[l]);
      tile_matmul<T, NP>(dcur, ld, m.out[l], m.w[l], ldp, nullptr, dnext);
      T* t = dcur;
      dcur = dnext;
      dnext = t;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Online softmax with un-gated statistics and a gated numerator (one head, n = D values).
// State: m (running max, −inf when empty), l = Σ exp(S − m), acc = Σ exp(S − m)·g·v.

// Raise the running max to m_new (≥ m): rescales l and acc by exp(m − m_new). Returns the factor.
template <class T>
GT_HD inline T online_softmax_rescale(T& m, T& l, T* acc, int n, T m_new) {
  if (!(m_new > m)) return T(1);
  const T c = gt_exp(m - m_new);  // 0 when m = −inf
  l *= c;
  for (int d = 0; d < n; ++d) acc[d] *= c;
  m = m_new;
  return c;
}

// All H heads of one key at once (vectorises over heads): p_h = exp(s_h − m_h), l_h += p_h, and
// pg_h = p_h·g (the gated weight of the key's values). Requires s_h <= m_h (m already raised).
template <class T>
GT_HD inline void online_softmax_probs(int H, const T* m, T* l, const T* s, T g, T* pg) {
  GT_SIMD
  for (int h = 0; h < H; ++h) {
    const T p = fast_exp(s[h] - m[h]);
    l[h] += p;
    pg[h] = p * g;
  }
}

// Final values: out = acc / l and lse = m + log l; a row with no key (l = 0) gives out = 0, lse = −inf.
template <class T>
GT_HD inline T online_softmax_finish(T m, T l, T* acc, int n) {
  if (!(l > T(0))) {
    for (int d = 0; d < n; ++d) acc[d] = T(0);
    return neg_inf<T>();
  }
  const T inv = T(1) / l;
  for (int d = 0; d < n; ++d) acc[d] *= inv;
  return m + gt_log(l);
}

}  // namespace gt

