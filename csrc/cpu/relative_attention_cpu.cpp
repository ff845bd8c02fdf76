// relative_attention_cpu.cpp — fused R-MAT relative attention on the CPU (OpenMP), forward and backward:
// run_relative_attention_fwd / run_relative_attention_bwd, called with checked inputs by ops_cpu.cpp.
// The maths is docs/semantics.md §6.5; nothing N×N×d is stored.
//
// Per ordered pair (i query, j key) of one molecule only the hidden vectors of φ_K and φ_V are formed:
//   pre_ij = W1 b_ij + c1 = Σ_{columns the graph code selects} W1[:, c] + W1[:, 14:] basis(d_ij) + c1,
//   uᴷ_ij = LeakyReLU(preᴷ_ij), uⱽ_ij = LeakyReLU(preⱽ_ij)   (Dh wide each, shared by the heads),
// with the distance basis computed here from the float64 positions (0 on every pair with a dummy node).
// Per query row and head, with g_ih = (q_ih + k_ih)·scale + v_rel_h and a_ih = W2ᴷ_hᵀ g_ih (once per row):
//   e_ij = scale·q_ih·k_jh + a_ih·uᴷ_ij.
// The released logit also holds g_ih·c2ᴷ_h + k_ih·u_h, constant along j: the softmax cancels it, so it is left
// out of e, out of the saved lse, and the gradients of c2ᴷ (and of u, which the kernels never see) are 0.
// The value term Σ_j α_ij rⱽ_ij = W2ⱽ_h Σ_j α_ij uⱽ_ij + c2ⱽ_h Σ_j α_ij: the online softmax accumulates
// Σ α v_j and the Dh-wide Σ α uⱽ_ij, projected once per row.
//
// Forward: tasks = (molecule, block of kBlock query rows) (relative_attention_fwd_tile); each row runs an online
// softmax over its molecule's keys (blocks of kBlock keys), itself included, and writes only its own out and lse.
//
// Backward (recomputation from lse, delta_ih = dout_ih·out_ih): the phase schedule of schedule.h, whose
// tasks of one phase touch disjoint rows; a task (I, J) (relative_attention_bwd_tile) visits the ordered pairs
// (i ∈ I, j ∈ J) and, off the diagonal, (i ∈ J, j ∈ I). Per pair and head, with w_ih = W2ⱽ_hᵀ dout_ih and
// c_ih = dout_ih·c2ⱽ_h (per row):
//   p = exp(e_ij − lse_ih), dα = dout_ih·v_jh + w_ih·uⱽ_ij + c_ih, ds = p (dα − delta_ih);
//   dq_ih += scale ds k_jh, dk_jh += scale ds q_ih, dv_jh += p dout_ih,
//   da_ih += ds uᴷ_ij, ū_ih += p uⱽ_ij, Σp_ih += p (per-row buffers [R, H, Dh]),
//   duᴷ_ij += ds a_ih, duⱽ_ij += p w_ih → through the LeakyReLU to W1, c1 (per-thread buffers) and, through
//   the basis, to the positions of i and j.
// A last pass per row turns da_ih into dg_ih = W2ᴷ_h da_ih (dq_ih, dk_ih += scale dg_ih, dv_rel_h += dg_ih,
// dW2ᴷ_h += g_ih da_ihᵀ) and adds dW2ⱽ_h += dout_ih ū_ihᵀ, dc2ⱽ_h += Σp_ih dout_ih.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "../contract.h"
#include "schedule.h"

namespace gtk {
namespace {

constexpr int kGraphChannels = gt::kBondChannels + gt::kHopChannels;

// The columns of b_ij's graph channels that the code selects (each 1; the others 0): at most 6. A field out of
// its range selects nothing (as gtkernels.ops.relation_code.decode_graph_relation).
inline int graph_columns(int code, int* cols) {
  int n = 0;
  if ((code >> gt::kCodeMaskFlagBit) & 1) cols[n++] = 0;
  const int type = (code >> gt::kCodeBondTypeShift) & gt::kCodeFieldMask;
  if (type >= 1 && type <= gt::kCodeBondTypes) cols[n++] = type;
  for (int f = 0; f < 3; ++f) {
    if ((code >> (gt::kCodeFlagShift + f)) & 1) cols[n++] = 1 + gt::kCodeBondTypes + f;
  }
  const int hop = (code >> gt::kCodeHopShift) & gt::kCodeFieldMask;
  if (hop < gt::kCodeHopBuckets) cols[n++] = gt::kBondChannels + hop;
  return n;
}

// The distance basis of §6.2 at distance d (Å), in float64: basis[n] = env(x) sin((n+1)πx), x = (d + offset) /
// cutoff, and (when dbasis is given) dbasis[n] = d basis[n] / d d. Returns false (and writes nothing) for
// x >= 1, where the basis is 0. sin and cos of (n+1)πx by rotation from those of πx.
inline bool distance_basis(double d, int K, double* basis, double* dbasis) {
  const double x = (d + gt::kDistanceOffset) / gt::kBasisCutoff;
  if (!(x < 1.0)) return false;
  constexpr int p = gt::kEnvelopeExponent + 1;
  constexpr double a = -(p + 1.0) * (p + 2.0) / 2.0, b = p * (p + 2.0), c = -p * (p + 1.0) / 2.0;
  double xp1 = 1.0;  // x^(p-1)
  for (int e = 0; e < p - 1; ++e) xp1 *= x;
  const double env = 1.0 / x + xp1 * (a + x * (b + x * c));
  const double denv = -1.0 / (x * x) + xp1 / x * ((p - 1.0) * a + x * (p * b + x * (p + 1.0) * c));
  const double theta = M_PI * x;
  const double s1 = std::sin(theta), c1 = std::cos(theta);
  double s = s1, co = c1;
  for (int n = 0; n < K; ++n) {
    const double w = M_PI * (n + 1);
    basis[n] = env * s;
    if (dbasis != nullptr) dbasis[n] = (denv * s + env * w * co) / gt::kBasisCutoff;
    const double sn = s * c1 + co * s1;
    co = co * c1 - s * s1;
    s = sn;
  }
  return true;
}

template <class T>
struct RelProblem {
  const T* q;
  const T* k;
  const T* v;
  const double* pos;
  const int16_t* code;
  const bool* valid;
  const bool* dummy;
  const T* vrel;  // [H, D] or nullptr (zero)
  const T* w1t;   // [C][2Dh]: W1ᴷ and W1ⱽ transposed side by side (column c of both, Dh + Dh)
  const T* c1;    // [2Dh]: c1ᴷ, c1ⱽ
  const T* w2k;   // [H·D, Dh]
  const T* w2v;   // [H·D, Dh]
  const T* c2v;   // [H·D]
  int64_t H, D, Dh, C, K;
  T scale;
};

// Per-pair state: pre-activations and hidden vectors of both φ (2Dh), the basis (K, float64), its derivative,
// the unit vector (p_i − p_j)/d and whether the basis depends on the positions.
template <class T>
struct PairState {
  std::vector<T> pre, u;
  std::vector<double> basis, dbasis;
  double dir[3] = {0.0, 0.0, 0.0};
  bool moving = false;
  int cols[6] = {0, 0, 0, 0, 0, 0};
  int ncols = 0;
  PairState(int64_t Dh, int64_t K) : pre(2 * Dh), u(2 * Dh), basis(K), dbasis(K) {}
};

template <class T>
inline T leaky(T x) {
  return x > T(0) ? x : static_cast<T>(gt::kLeakySlope) * x;
}

// Fills st for the pair (i query, j key) with graph code `code`; with_grad also computes dbasis and dir.
template <class T>
void pair_hidden(const RelProblem<T>& P, int64_t i, int64_t j, int code, bool with_grad, PairState<T>& st) {
  const int64_t W = 2 * P.Dh;
  T* pre = st.pre.data();
  for (int64_t m = 0; m < W; ++m) pre[m] = P.c1[m];
  st.ncols = graph_columns(code, st.cols);
  for (int t = 0; t < st.ncols; ++t) {
    const T* col = P.w1t + st.cols[t] * W;
    GT_SIMD
    for (int64_t m = 0; m < W; ++m) pre[m] += col[m];
  }
  st.moving = false;
  bool inside = false;
  const bool located = P.dummy == nullptr || (!P.dummy[i] && !P.dummy[j]);
  if (located) {
    double d = 0.0;
    if (i != j) {
      const double* pi = P.pos + 3 * i;
      const double* pj = P.pos + 3 * j;
      double diff[3], sq = 0.0;
      for (int c = 0; c < 3; ++c) {
        diff[c] = pi[c] - pj[c];
        sq += diff[c] * diff[c];
      }
      d = std::sqrt(sq);
      if (with_grad && d > 0.0) {
        for (int c = 0; c < 3; ++c) st.dir[c] = diff[c] / d;
        st.moving = true;
      }
    }
    inside = distance_basis(d, static_cast<int>(P.K), st.basis.data(), with_grad ? st.dbasis.data() : nullptr);
  }
  if (inside) {
    for (int64_t n = 0; n < P.K; ++n) {
      const T bn = static_cast<T>(st.basis[n]);
      const T* col = P.w1t + (kGraphChannels + n) * W;
      GT_SIMD
      for (int64_t m = 0; m < W; ++m) pre[m] += bn * col[m];
    }
  } else {
    std::fill(st.basis.begin(), st.basis.end(), 0.0);
    std::fill(st.dbasis.begin(), st.dbasis.end(), 0.0);
    st.moving = false;
  }
  T* u = st.u.data();
  GT_SIMD
  for (int64_t m = 0; m < W; ++m) u[m] = leaky(pre[m]);
}

// a·b, n long (a vectorised reduction: a fixed summation order for a given build).
template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = T(0);
  GT_SIMD_REDUCE(s)
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// a[h][m] = Σ_d W2[(h·D + d), m] x[h·D + d]: W2_hᵀ x_h for every head (x [H·D], a [H·Dh]).
template <class T>
void project_heads_t(const T* w2, const T* x, int64_t H, int64_t D, int64_t Dh, T* a) {
  for (int64_t h = 0; h < H; ++h) {
    T* ah = a + h * Dh;
    for (int64_t m = 0; m < Dh; ++m) ah[m] = T(0);
    for (int64_t d = 0; d < D; ++d) {
      const T xd = x[h * D + d];
      const T* row = w2 + (h * D + d) * Dh;
      GT_SIMD
      for (int64_t m = 0; m < Dh; ++m) ah[m] += xd * row[m];
    }
  }
}

// g_ih = (q_ih + k_ih)·scale + v_rel_h, every head: g [H·D].
template <class T>
void row_g(const RelProblem<T>& P, int64_t i, T* g) {
  const int64_t HD = P.H * P.D;
  const T* qi = P.q + i * HD;
  const T* ki = P.k + i * HD;
  for (int64_t e = 0; e < HD; ++e) g[e] = (qi[e] + ki[e]) * P.scale + (P.vrel != nullptr ? P.vrel[e] : T(0));
}

// Molecule b's first row, row count and the offset of its code block.
struct Molecule {
  int64_t start, n, code_offset;
};

std::vector<Molecule> molecules(const at::Tensor& seg) {
  const int64_t* s = seg.data_ptr<int64_t>();
  std::vector<Molecule> out;
  int64_t offset = 0;
  for (int64_t b = 0; b + 1 < seg.numel(); ++b) {
    const int64_t n = s[b + 1] - s[b];
    out.push_back({s[b], n, offset});
    offset += n * n;
  }
  return out;
}

template <class T>
inline int code_of(const RelProblem<T>& P, const Molecule& mol, int64_t i, int64_t j) {
  return static_cast<int>(P.code[mol.code_offset + (i - mol.start) * mol.n + (j - mol.start)]);
}

// ---------------------------------------------------------------------------------------------------------
// Forward.

template <class T>
struct FwdScratch {
  PairState<T> st;
  std::vector<T> g, a;        // [H·D], [H·Dh]
  std::vector<T> S, UV;       // [kBlock][H] logits, [kBlock][Dh] uⱽ of one key block
  std::vector<int64_t> keys;  // [kBlock]
  std::vector<T> m, l, accv, accu;  // [H], [H], [H·D], [H·Dh]
  FwdScratch(const RelProblem<T>& P)
      : st(P.Dh, P.K), g(P.H * P.D), a(P.H * P.Dh), S(kBlock * P.H), UV(kBlock * P.Dh), keys(kBlock), m(P.H),
        l(P.H), accv(P.H * P.D), accu(P.H * P.Dh) {}
};

// One query row: its online softmax over the molecule's valid keys (itself included), then out and lse.
template <class T>
void attend_row(const RelProblem<T>& P, const Molecule& mol, int64_t i, FwdScratch<T>& sc, T* out,
                                T* lse) {
  const int64_t H = P.H, D = P.D, Dh = P.Dh, HD = H * D;
  row_g(P, i, sc.g.data());
  project_heads_t(P.w2k, sc.g.data(), H, D, Dh, sc.a.data());
  std::fill(sc.m.begin(), sc.m.end(), -std::numeric_limits<T>::infinity());
  std::fill(sc.l.begin(), sc.l.end(), T(0));
  std::fill(sc.accv.begin(), sc.accv.end(), T(0));
  std::fill(sc.accu.begin(), sc.accu.end(), T(0));
  const T* qi = P.q + i * HD;
  for (int64_t j0 = mol.start; j0 < mol.start + mol.n; j0 += kBlock) {
    const int nk = collect_valid(P.valid, j0, std::min(j0 + kBlock, mol.start + mol.n), sc.keys.data());
    if (nk == 0) continue;
    for (int t = 0; t < nk; ++t) {
      const int64_t j = sc.keys[t];
      pair_hidden(P, i, j, code_of(P, mol, i, j), false, sc.st);
      const T* uk = sc.st.u.data();
      std::copy(sc.st.u.data() + Dh, sc.st.u.data() + 2 * Dh, sc.UV.data() + t * Dh);
      const T* kj = P.k + j * HD;
      for (int64_t h = 0; h < H; ++h) {
        sc.S[t * H + h] = P.scale * dot(qi + h * D, kj + h * D, D) + dot(sc.a.data() + h * Dh, uk, Dh);
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      T bm = sc.S[h];
      for (int t = 1; t < nk; ++t) bm = std::max(bm, sc.S[t * H + h]);
      if (bm > sc.m[h]) {
        const T c = std::exp(sc.m[h] - bm);  // 0 while m = −inf
        sc.l[h] *= c;
        for (int64_t d = 0; d < D; ++d) sc.accv[h * D + d] *= c;
        for (int64_t m = 0; m < Dh; ++m) sc.accu[h * Dh + m] *= c;
        sc.m[h] = bm;
      }
    }
    for (int t = 0; t < nk; ++t) {
      const T* vj = P.v + sc.keys[t] * HD;
      const T* uv = sc.UV.data() + t * Dh;
      for (int64_t h = 0; h < H; ++h) {
        const T p = std::exp(sc.S[t * H + h] - sc.m[h]);
        sc.l[h] += p;
        T* av = sc.accv.data() + h * D;
        T* au = sc.accu.data() + h * Dh;
        const T* vh = vj + h * D;
        GT_SIMD
        for (int64_t d = 0; d < D; ++d) av[d] += p * vh[d];
        GT_SIMD
        for (int64_t m = 0; m < Dh; ++m) au[m] += p * uv[m];
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    T* oh = out + i * HD + h * D;
    if (!(sc.l[h] > T(0))) {
      for (int64_t d = 0; d < D; ++d) oh[d] = T(0);
      lse[i * H + h] = -std::numeric_limits<T>::infinity();
      continue;
    }
    const T inv = T(1) / sc.l[h];
    const T* au = sc.accu.data() + h * Dh;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t e = h * D + d;
      oh[d] = (sc.accv[e] + dot(P.w2v + e * Dh, au, Dh)) * inv + P.c2v[e];
    }
    lse[i * H + h] = sc.m[h] + std::log(sc.l[h]);
  }
}

// The work unit of the forward: the rows r0 .. r0 + kBlock − 1 of molecule `mol` (those that exist and are valid).
template <class T>
void relative_attention_fwd_tile(const RelProblem<T>& P, const Molecule& mol, int64_t r0, FwdScratch<T>& sc, T* out,
                                 T* lse) {
  const int64_t r1 = std::min(r0 + kBlock, mol.start + mol.n);
  for (int64_t i = r0; i < r1; ++i) {
    if (P.valid == nullptr || P.valid[i]) attend_row(P, mol, i, sc, out, lse);
  }
}

template <class T>
void relative_attention_fwd_typed(const RelProblem<T>& P, const std::vector<Molecule>& mols, T* out, T* lse) {
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (molecule, first row of a block)
  for (int64_t b = 0; b < static_cast<int64_t>(mols.size()); ++b) {
    for (int64_t r = mols[b].start; r < mols[b].start + mols[b].n; r += kBlock) tasks.push_back({b, r});
  }
  const int nt = num_threads();
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel num_threads(nt)
  {
    FwdScratch<T> sc(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      relative_attention_fwd_tile(P, mols[tasks[t].first], tasks[t].second, sc, out, lse);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

// Layout of one thread's flat parameter gradient: dW1 as [C][2Dh] (as w1t), dc1 [2Dh], dW2ᴷ [H·D·Dh],
// dW2ⱽ [H·D·Dh], dc2ⱽ [H·D], dv_rel [H·D].
struct GradLayout {
  int64_t w1, c1, w2k, w2v, c2v, vrel, size;
  GradLayout(int64_t H, int64_t D, int64_t Dh, int64_t C) {
    w1 = 0;
    c1 = w1 + C * 2 * Dh;
    w2k = c1 + 2 * Dh;
    w2v = w2k + H * D * Dh;
    c2v = w2v + H * D * Dh;
    vrel = c2v + H * D;
    size = vrel + H * D;
  }
};

template <class T>
struct BwdProblem : RelProblem<T> {
  const T* dout;
  const T* lse;
  const T* delta;  // [R, H]
  const T* A;      // [R, H, Dh]: a_ih
  const T* Wd;     // [R, H, Dh]: w_ih = W2ⱽ_hᵀ dout_ih
  const T* Cc;     // [R, H]: dout_ih·c2ⱽ_h
  T* dA;           // [R, H, Dh]: Σ_j ds uᴷ_ij
  T* Ubar;         // [R, H, Dh]: Σ_j p uⱽ_ij
  T* Psum;         // [R, H]: Σ_j p
  T* dq;
  T* dk;
  T* dv;
  double* dpos;
};

template <class T>
struct BwdScratch {
  TaskRows rows;
  PairState<T> st;
  std::vector<T> du;  // [2Dh]
  BwdScratch(const RelProblem<T>& P) : st(P.Dh, P.K), du(2 * P.Dh) {}
};

// The backward of one ordered pair (i query, j key); param: this thread's flat gradient (GradLayout).
template <class T>
void pair_backward(const BwdProblem<T>& P, const Molecule& mol, int64_t i, int64_t j,
                                 BwdScratch<T>& sc, const GradLayout& gl, T* param) {
  const int64_t H = P.H, D = P.D, Dh = P.Dh, HD = H * D, W = 2 * Dh;
  PairState<T>& st = sc.st;
  pair_hidden<T>(P, i, j, code_of(P, mol, i, j), true, st);
  const T* uk = st.u.data();
  const T* uv = st.u.data() + Dh;
  T* duk = sc.du.data();
  T* duv = sc.du.data() + Dh;
  std::fill(sc.du.begin(), sc.du.end(), T(0));
  const T* qi = P.q + i * HD;
  const T* kj = P.k + j * HD;
  const T* vj = P.v + j * HD;
  const T* doi = P.dout + i * HD;
  T* dqi = P.dq + i * HD;
  T* dkj = P.dk + j * HD;
  T* dvj = P.dv + j * HD;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t ih = i * H + h;
    const T* a = P.A + ih * Dh;
    const T* w = P.Wd + ih * Dh;
    const int64_t o = h * D;
    const T s = P.scale * dot(qi + o, kj + o, D) + dot(a, uk, Dh);
    const T p = std::exp(s - P.lse[ih]);
    const T dalpha = dot(doi + o, vj + o, D) + dot(w, uv, Dh) + P.Cc[ih];
    const T ds = p * (dalpha - P.delta[ih]);
    const T sds = P.scale * ds;
    GT_SIMD
    for (int64_t d = 0; d < D; ++d) {
      dqi[o + d] += sds * kj[o + d];
      dkj[o + d] += sds * qi[o + d];
      dvj[o + d] += p * doi[o + d];
    }
    T* dA = P.dA + ih * Dh;
    T* ub = P.Ubar + ih * Dh;
    GT_SIMD
    for (int64_t m = 0; m < Dh; ++m) {
      dA[m] += ds * uk[m];
      ub[m] += p * uv[m];
      duk[m] += ds * a[m];
      duv[m] += p * w[m];
    }
    P.Psum[ih] += p;
  }
  // Through the LeakyReLU: dpre (in place of du).
  T* dpre = sc.du.data();
  const T slope = static_cast<T>(gt::kLeakySlope);
  for (int64_t m = 0; m < W; ++m) dpre[m] *= st.pre[m] > T(0) ? T(1) : slope;
  T* dc1 = param + gl.c1;
  for (int64_t m = 0; m < W; ++m) dc1[m] += dpre[m];
  for (int t = 0; t < st.ncols; ++t) {
    T* col = param + gl.w1 + st.cols[t] * W;
    for (int64_t m = 0; m < W; ++m) col[m] += dpre[m];
  }
  double dd = 0.0;
  for (int64_t n = 0; n < P.K; ++n) {
    if (st.basis[n] == 0.0 && st.dbasis[n] == 0.0) continue;
    const T bn = static_cast<T>(st.basis[n]);
    T* col = param + gl.w1 + (kGraphChannels + n) * W;
    const T* wcol = P.w1t + (kGraphChannels + n) * W;
    T db = T(0);
    for (int64_t m = 0; m < W; ++m) {
      col[m] += bn * dpre[m];
      db += wcol[m] * dpre[m];
    }
    dd += static_cast<double>(db) * st.dbasis[n];
  }
  if (st.moving) {
    double* dpi = P.dpos + 3 * i;
    double* dpj = P.dpos + 3 * j;
    for (int c = 0; c < 3; ++c) {
      dpi[c] += dd * st.dir[c];
      dpj[c] -= dd * st.dir[c];
    }
  }
}

template <class T>
void relative_attention_bwd_tile(const BwdProblem<T>& P, const std::vector<Molecule>& mols,
                                 const std::vector<int64_t>& mol_of_row, const PairTask& task, BwdScratch<T>& sc,
                                 const GradLayout& gl, T* param) {
  TaskRows& tr = sc.rows;
  if (!tr.load(task, P.valid)) {
    // load() is false also for a diagonal block of one valid row (no unordered pair): its self-pair remains.
    if (!(tr.diag && tr.nI == 1)) return;
  }
  const Molecule& mol = mols[mol_of_row[task.i0]];
  const int64_t* vj = tr.rows_j();
  for (int a = 0; a < tr.nI; ++a) {
    for (int b = 0; b < tr.nJ; ++b) {
      pair_backward(P, mol, tr.vi[a], vj[b], sc, gl, param);
      if (!tr.diag) pair_backward(P, mol, vj[b], tr.vi[a], sc, gl, param);
    }
  }
}

// The per-row part of the backward (see the header); param: this thread's flat gradient.
template <class T>
void row_backward(const BwdProblem<T>& P, int64_t i, T* g, T* dg, const GradLayout& gl, T* param) {
  const int64_t H = P.H, D = P.D, Dh = P.Dh, HD = H * D;
  row_g<T>(P, i, g);
  const T* doi = P.dout + i * HD;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t ih = i * H + h;
    const T* dA = P.dA + ih * Dh;
    const T* ub = P.Ubar + ih * Dh;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t e = h * D + d;
      dg[e] = dot(P.w2k + e * Dh, dA, Dh);
      T* w2k = param + gl.w2k + e * Dh;
      T* w2v = param + gl.w2v + e * Dh;
      const T ge = g[e], de = doi[e];
      GT_SIMD
      for (int64_t m = 0; m < Dh; ++m) {
        w2k[m] += ge * dA[m];
        w2v[m] += de * ub[m];
      }
      param[gl.c2v + e] += de * P.Psum[ih];
    }
  }
  for (int64_t e = 0; e < HD; ++e) {
    P.dq[i * HD + e] += P.scale * dg[e];
    P.dk[i * HD + e] += P.scale * dg[e];
    param[gl.vrel + e] += dg[e];
  }
}

template <class T>
std::vector<T> relative_attention_bwd_typed(BwdProblem<T>& P, const std::vector<Molecule>& mols, const Schedule& sch,
                                            int64_t R, const T* out) {
  const int64_t H = P.H, D = P.D, Dh = P.Dh, HD = H * D;
  std::vector<int64_t> mol_of_row(static_cast<size_t>(R), 0);
  for (int64_t b = 0; b < static_cast<int64_t>(mols.size()); ++b) {
    for (int64_t r = mols[b].start; r < mols[b].start + mols[b].n; ++r) mol_of_row[r] = b;
  }
  std::vector<T> delta(R * H, T(0)), A(R * H * Dh, T(0)), Wd(R * H * Dh, T(0)), Cc(R * H, T(0));
  std::vector<T> dA(R * H * Dh, T(0)), Ubar(R * H * Dh, T(0)), Psum(R * H, T(0));
  P.delta = delta.data();
  P.A = A.data();
  P.Wd = Wd.data();
  P.Cc = Cc.data();
  P.dA = dA.data();
  P.Ubar = Ubar.data();
  P.Psum = Psum.data();
  const GradLayout gl(H, D, Dh, P.C);
  const int nt = num_threads();
  std::vector<T> partials(static_cast<size_t>(nt * gl.size), T(0));
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> g(HD), dg(HD);
    T* param = partials.data() + static_cast<int64_t>(thread_id()) * gl.size;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      if (P.valid != nullptr && !P.valid[r]) continue;
      row_g<T>(P, r, g.data());
      project_heads_t(P.w2k, g.data(), H, D, Dh, A.data() + r * H * Dh);
      project_heads_t(P.w2v, P.dout + r * HD, H, D, Dh, Wd.data() + r * H * Dh);
      for (int64_t h = 0; h < H; ++h) {
        const T* doh = P.dout + r * HD + h * D;
        delta[r * H + h] = dot(doh, out + r * HD + h * D, D);
        Cc[r * H + h] = dot(doh, P.c2v + h * D, D);
      }
    }
    BwdScratch<T> sc(P);
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        relative_attention_bwd_tile<T>(P, mols, mol_of_row, sch.tasks[t], sc, gl, param);
      }
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      if (P.valid == nullptr || P.valid[r]) row_backward<T>(P, r, g.data(), dg.data(), gl, param);
    }
  }
  return reduce_partials<T>(partials, nt, gl.size);
}

// [W1ᴷ | W1ⱽ] transposed to [C][2Dh], and [c1ᴷ | c1ⱽ].
template <class T>
void pack_first_layers(at::TensorList phi_k, at::TensorList phi_v, std::vector<T>& w1t, std::vector<T>& c1) {
  const int64_t Dh = phi_k[0].size(0), C = phi_k[0].size(1);
  w1t.assign(C * 2 * Dh, T(0));
  c1.assign(2 * Dh, T(0));
  const T* wk = phi_k[0].data_ptr<T>();
  const T* wv = phi_v[0].data_ptr<T>();
  for (int64_t m = 0; m < Dh; ++m) {
    for (int64_t c = 0; c < C; ++c) {
      w1t[c * 2 * Dh + m] = wk[m * C + c];
      w1t[c * 2 * Dh + Dh + m] = wv[m * C + c];
    }
    c1[m] = phi_k[1].data_ptr<T>()[m];
    c1[Dh + m] = phi_v[1].data_ptr<T>()[m];
  }
}

template <class T>
RelProblem<T> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                           const at::Tensor& code, at::TensorList phi_k, at::TensorList phi_v,
                           const std::optional<at::Tensor>& v_rel, const std::optional<at::Tensor>& valid,
                           const std::optional<at::Tensor>& dummy, const std::vector<T>& w1t,
                           const std::vector<T>& c1) {
  RelProblem<T> P;
  P.q = q.data_ptr<T>();
  P.k = k.data_ptr<T>();
  P.v = v.data_ptr<T>();
  P.pos = pos.data_ptr<double>();
  P.code = code.data_ptr<int16_t>();
  P.valid = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  P.dummy = dummy.has_value() ? dummy->data_ptr<bool>() : nullptr;
  P.vrel = v_rel.has_value() ? v_rel->data_ptr<T>() : nullptr;
  P.w1t = w1t.data();
  P.c1 = c1.data();
  P.w2k = phi_k[2].data_ptr<T>();
  P.w2v = phi_v[2].data_ptr<T>();
  P.c2v = phi_v[3].data_ptr<T>();
  P.H = q.size(1);
  P.D = q.size(2);
  P.Dh = phi_k[0].size(0);
  P.C = phi_k[0].size(1);
  P.K = P.C - kGraphChannels;
  P.scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(P.D)));
  return P;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_relative_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& pos,
                                                              const at::Tensor& code, at::TensorList phi_k,
                                                              at::TensorList phi_v,
                                                              const std::optional<at::Tensor>& v_rel,
                                                              const at::Tensor& seg,
                                                              const std::optional<at::Tensor>& valid,
                                                              const std::optional<at::Tensor>& dummy) {
  const int64_t R = q.size(0), H = q.size(1);
  at::Tensor out = at::zeros_like(q);
  at::Tensor lse = at::full({R, H}, -std::numeric_limits<double>::infinity(), q.options());
  const std::vector<Molecule> mols = molecules(seg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtkernels relative_attention_fwd", [&] {
    std::vector<scalar_t> w1t, c1;
    pack_first_layers<scalar_t>(phi_k, phi_v, w1t, c1);
    const RelProblem<scalar_t> P = make_problem<scalar_t>(q, k, v, pos, code, phi_k, phi_v, v_rel, valid, dummy,
                                                          w1t, c1);
    relative_attention_fwd_typed<scalar_t>(P, mols, out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           at::Tensor>
run_relative_attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& pos, const at::Tensor& code, at::TensorList phi_k,
                           at::TensorList phi_v, const std::optional<at::Tensor>& v_rel, const at::Tensor& seg,
                           const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& dummy,
                           const at::Tensor& out, const at::Tensor& lse) {
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2);
  at::Tensor dq = at::zeros_like(q);
  at::Tensor dk = at::zeros_like(k);
  at::Tensor dv = at::zeros_like(v);
  at::Tensor dpos = at::zeros_like(pos);
  std::vector<at::Tensor> dphi_k, dphi_v;
  for (int l = 0; l < 4; ++l) {
    dphi_k.push_back(at::zeros_like(phi_k[l]));
    dphi_v.push_back(at::zeros_like(phi_v[l]));
  }
  at::Tensor dvrel = at::zeros({H, D}, q.options());
  const std::vector<Molecule> mols = molecules(seg);
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtkernels relative_attention_bwd", [&] {
    using T = scalar_t;
    std::vector<T> w1t, c1;
    pack_first_layers<T>(phi_k, phi_v, w1t, c1);
    BwdProblem<T> P;
    static_cast<RelProblem<T>&>(P) = make_problem<T>(q, k, v, pos, code, phi_k, phi_v, v_rel, valid, dummy, w1t,
                                                     c1);
    P.dout = dout.data_ptr<T>();
    P.lse = lse.data_ptr<T>();
    P.dq = dq.data_ptr<T>();
    P.dk = dk.data_ptr<T>();
    P.dv = dv.data_ptr<T>();
    P.dpos = dpos.data_ptr<double>();
    const std::vector<T> grad = relative_attention_bwd_typed<T>(P, mols, sch, R, out.data_ptr<T>());
    const int64_t Dh = P.Dh, C = P.C, HD = H * D;
    const GradLayout gl(H, D, Dh, C);
    T* wk = dphi_k[0].data_ptr<T>();
    T* wv = dphi_v[0].data_ptr<T>();
    for (int64_t m = 0; m < Dh; ++m) {
      for (int64_t c = 0; c < C; ++c) {
        wk[m * C + c] = grad[gl.w1 + c * 2 * Dh + m];
        wv[m * C + c] = grad[gl.w1 + c * 2 * Dh + Dh + m];
      }
      dphi_k[1].data_ptr<T>()[m] = grad[gl.c1 + m];
      dphi_v[1].data_ptr<T>()[m] = grad[gl.c1 + Dh + m];
    }
    std::copy(grad.begin() + gl.w2k, grad.begin() + gl.w2k + HD * Dh, dphi_k[2].data_ptr<T>());
    std::copy(grad.begin() + gl.w2v, grad.begin() + gl.w2v + HD * Dh, dphi_v[2].data_ptr<T>());
    std::copy(grad.begin() + gl.c2v, grad.begin() + gl.c2v + HD, dphi_v[3].data_ptr<T>());
    std::copy(grad.begin() + gl.vrel, grad.begin() + gl.vrel + HD, dvrel.data_ptr<T>());
    // dphi_k[3] (c2ᴷ) stays 0: its logit term is constant along j.
  });
  return {dq, dk, dv, dpos, dphi_k, dphi_v, dvrel};
}

}  // namespace gtk
