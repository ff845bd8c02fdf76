// attention_cpu.cpp — fused geometric attention on the CPU (OpenMP), forward and backward: run_attention_fwd /
// run_attention_bwd, called with checked inputs by ops_cpu.cpp.
//
// Work unit (attention_fwd_tile / attention_bwd_tile): a task = the pairs between two row blocks I, J of one
// segment (I = J on a diagonal task), see Schedule in schedule.h: the tasks of one phase touch disjoint rows,
// so no atomics are needed, and every unordered pair {i, j} is visited exactly once. Nothing N×N is stored:
// per-thread scratch is O(kBlock² + kBlock·H) (one gate tile, the scores of one row against one key block), the
// only global extras are O(R·H) (running sums in the forward, delta_i = dout_i·out_i in the backward).
//
// Forward, per task: rinv and the gate g = ψ(rinv)² of every pair of the tile (ψ evaluated on tiles of pairs,
// layer by layer, once per pair and shared by all heads); then every row of I updates its per-head online
// softmax with the keys of J and, off the diagonal, every row of J with the keys of I (g_ij = g_ji).
// The softmax state lives in global per-row buffers (running max in `lse`, un-gated sum l in a [R, H]
// buffer, gated numerator directly in `out`) and is finalised after the last phase:
// out = acc / l, lse = m + log l.
//
// Backward, per task: for each pair (i, j), recompute rinv, ψ (keeping its activations) and, per head,
// p_ij = exp(S_ij − lse_i) and p_ji = exp(S_ji − lse_j); with delta_i = dout_i·out_i and dA_ij = dout_i·v_j:
// dS_ij = p_ij (g dA_ij − delta_i), dq_i += scale dS_ij k_j, dk_j += scale dS_ij q_i, dv_j += p_ij g dout_i, and
// the same with i and j swapped; dg = Σ_heads p_ij dA_ij + p_ji dA_ji is back-propagated through ψ
// (seed 2ψ dg) to the ψ parameters (per-thread buffers, reduced in thread order) and through rinv to
// dpos_i and dpos_j.
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "schedule.h"

namespace gtk {
namespace {

template <class T>
struct AttnProblem {
  const T* q;
  const T* k;
  const T* v;
  const double* pos;  // [R, 3] float64 (see inverse_distance)
  const bool* valid;
  int64_t H, D;
  T scale;
};

// Head loops over per-head scalars run over H rounded up to a SIMD line (padded scratch), so that they
// vectorise without a scalar remainder even for H = 8.
template <class T>
int64_t padded_heads(int64_t H) {
  return (H + gt::kVec<T> - 1) / gt::kVec<T> * gt::kVec<T>;
}

// Per-thread scratch of the forward, sized once.
template <class T>
struct FwdScratch {
  TaskRows rows;
  std::vector<T> G;   // [kBlock][kBlock] gates of the current tile
  std::vector<T> ws;  // ψ tile workspace
  std::vector<T> S;   // [kBlock][Hp] scores of one query row against a key block (Hp: padded heads)
  std::vector<T> bm;  // [Hp] block max
  std::vector<T> pg;  // [Hp] gated probabilities of one key
  std::vector<T> ml, ll;  // [Hp] local copies of the row's running max and sum
  std::vector<int64_t> keys;
  std::vector<T> gk;
  FwdScratch(const gt::MlpView<T>& mv, int64_t H)
      : G(kBlock * kBlock), ws(gt::tile_ws_size<T, kTilePairs>(mv)), S(kBlock * padded_heads<T>(H), T(0)),
        bm(padded_heads<T>(H), T(0)), pg(padded_heads<T>(H), T(0)), ml(padded_heads<T>(H), T(0)),
        ll(padded_heads<T>(H), T(0)), keys(kBlock), gk(kBlock) {}
};

// Gates of the pairs of a tile: G[a][b] = ψ(rinv_ab)².
template <class T>
void tile_gates(const gt::MlpView<T>& mv, const double* pos, const TaskRows& tr, T* ws, T* G) {
  T x[kTilePairs], y[kTilePairs];
  const int64_t* vj = tr.rows_j();
  for (int c0 = 0; c0 < tr.npairs; c0 += kTilePairs) {
    const int n = std::min(kTilePairs, tr.npairs - c0);
    for (int p = 0; p < kTilePairs; ++p) x[p] = T(0);  // padding pairs of the last tile: rinv 0
    for (int p = 0; p < n; ++p) {
      x[p] = gt::inverse_distance<T>(pos + 3 * tr.vi[tr.pa[c0 + p]], pos + 3 * vj[tr.pb[c0 + p]]);
    }
    gt::mlp_forward_simd<T, kTilePairs>(mv, x, ws, y);
    for (int p = 0; p < n; ++p) G[tr.pa[c0 + p] * kBlock + tr.pb[c0 + p]] = y[p] * y[p];
  }
}

// Small head dims (compile-time D <= 4) vectorise across heads; larger ones along D within a head.
template <int DC>
constexpr bool kAcrossHeads = (DC > 0 && DC <= 4);

// Dot products of D-vectors, four at a time (a1·b1, a2·b2, a3·b3, a4·b4). With a compile-time D that is a
// power of two up to a line, or a multiple of a line, it uses native vectors and pairwise horizontal sums
// (a plain reduction loop would be summed lane by lane).
template <class T, int DC>
GT_FORCE_INLINE void dot4(const T* a1, const T* b1, const T* a2, const T* b2, const T* a3, const T* b3, const T* a4,
                          const T* b4, int64_t D, T& r1, T& r2, T& r3, T& r4) {
#if defined(GT_VECTOR_LINES)
  constexpr int C = gt::kVec<T>;
  if constexpr (DC > 0 && DC % C == 0) {
    using L = gt::Line<T>;
    L s1 = gt::line_zero<T>(), s2 = s1, s3 = s1, s4 = s1;
    for (int d = 0; d < DC; d += C) {
      s1 = gt::line_fma<T>(s1, gt::line_load<T>(a1 + d), gt::line_load<T>(b1 + d));
      s2 = gt::line_fma<T>(s2, gt::line_load<T>(a2 + d), gt::line_load<T>(b2 + d));
      s3 = gt::line_fma<T>(s3, gt::line_load<T>(a3 + d), gt::line_load<T>(b3 + d));
      s4 = gt::line_fma<T>(s4, gt::line_load<T>(a4 + d), gt::line_load<T>(b4 + d));
    }
    r1 = gt::line_sum<T>(s1);
    r2 = gt::line_sum<T>(s2);
    r3 = gt::line_sum<T>(s3);
    r4 = gt::line_sum<T>(s4);
    return;
  } else if constexpr (DC >= 2 && DC < C && (DC & (DC - 1)) == 0) {
    using V = typename gt::VecN<T, DC>::type;
    auto ld = [](const T* p) { return *reinterpret_cast<const V*>(p); };
    r1 = gt::vec_sum<T, DC>(ld(a1) * ld(b1));
    r2 = gt::vec_sum<T, DC>(ld(a2) * ld(b2));
    r3 = gt::vec_sum<T, DC>(ld(a3) * ld(b3));
    r4 = gt::vec_sum<T, DC>(ld(a4) * ld(b4));
    return;
  }
#endif
  const int64_t n = DC > 0 ? DC : D;
  T s1 = T(0), s2 = T(0), s3 = T(0), s4 = T(0);
  GT_SIMD_REDUCE(s1, s2, s3, s4)
  for (int64_t d = 0; d < n; ++d) {
    s1 += a1[d] * b1[d];
    s2 += a2[d] * b2[d];
    s3 += a3[d] * b3[d];
    s4 += a4[d] * b4[d];
  }
  r1 = s1;
  r2 = s2;
  r3 = s3;
  r4 = s4;
}

template <class T, int DC>
GT_FORCE_INLINE T dot1(const T* a, const T* b, int64_t D) {
  T r, u2, u3, u4;
  dot4<T, DC>(a, b, a, b, a, b, a, b, D, r, u2, u3, u4);  // the unused copies are dead code
  return r;
}

// One query row against a list of keys: scores, block max, rescale, accumulate (gt:: online softmax).
// DC: compile-time head dim (0 = runtime D). m, l: the row's running max and sum [H] (global);
// scratch (padded to Hp heads, zero-initialised once): S [nk][Hp], bm, pg, ml, ll [Hp].
template <class T, int DC>
void row_update(const AttnProblem<T>& P, const T* qi, const int64_t* keys, const T* gk, int nk, T* S, T* bm, T* pg,
                T* ml, T* ll, T* m, T* l, T* acc) {
  const int64_t H = P.H;
  const int64_t Hp = padded_heads<T>(H);
  const int64_t D = DC > 0 ? DC : P.D;
  const int64_t HD = H * D;
  const T scale = P.scale;
  for (int t = 0; t < nk; ++t) {
    const T* kj = P.k + keys[t] * HD;
    T* St = S + t * Hp;
    if constexpr (kAcrossHeads<DC>) {
      GT_SIMD
      for (int64_t h = 0; h < H; ++h) {
        T s = T(0);
        for (int64_t d = 0; d < DC; ++d) s += qi[h * DC + d] * kj[h * DC + d];
        St[h] = s * scale;
      }
    } else {
      for (int64_t h = 0; h < H; ++h) St[h] = dot1<T, DC>(qi + h * D, kj + h * D, D) * scale;
    }
  }
  GT_SIMD
  for (int64_t h = 0; h < Hp; ++h) bm[h] = S[h];
  for (int t = 1; t < nk; ++t) {
    const T* St = S + t * Hp;
    GT_SIMD
    for (int64_t h = 0; h < Hp; ++h) bm[h] = St[h] > bm[h] ? St[h] : bm[h];
  }
  for (int64_t h = 0; h < H; ++h) {
    gt::online_softmax_rescale<T>(m[h], l[h], acc + h * D, static_cast<int>(D), bm[h]);
    ml[h] = m[h];
    ll[h] = l[h];
  }
  for (int t = 0; t < nk; ++t) {
    const T* vj = P.v + keys[t] * HD;
    gt::online_softmax_probs<T>(static_cast<int>(Hp), ml, ll, S + t * Hp, gk[t], pg);
    if constexpr (kAcrossHeads<DC>) {
      GT_SIMD
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < DC; ++d) acc[h * DC + d] += pg[h] * vj[h * DC + d];
      }
    } else {
      for (int64_t h = 0; h < H; ++h) {
        const T w = pg[h];
        GT_SIMD
        for (int64_t d = 0; d < D; ++d) acc[h * D + d] += w * vj[h * D + d];
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) l[h] = ll[h];
}

template <class T, int DC>
void attention_fwd_tile(const AttnProblem<T>& P, const gt::MlpView<T>& mv, const PairTask& task, FwdScratch<T>& sc,
                        T* out, T* M, T* Lsum) {
  TaskRows& tr = sc.rows;
  if (!tr.load(task, P.valid)) return;
  const int64_t H = P.H;
  const int64_t HD = H * (DC > 0 ? DC : P.D);
  tile_gates<T>(mv, P.pos, tr, sc.ws.data(), sc.G.data());
  const int64_t* vj = tr.rows_j();
  // Rows of I against the keys of J.
  for (int a = 0; a < tr.nI; ++a) {
    int nk = 0;
    for (int b = 0; b < tr.nJ; ++b) {
      if (tr.diag && b == a) continue;
      sc.keys[nk] = vj[b];
      // On the diagonal tile only a < b was computed: G is symmetric.
      sc.gk[nk] = (tr.diag && b < a) ? sc.G[b * kBlock + a] : sc.G[a * kBlock + b];
      ++nk;
    }
    if (nk == 0) continue;
    const int64_t i = tr.vi[a];
    row_update<T, DC>(P, P.q + i * HD, sc.keys.data(), sc.gk.data(), nk, sc.S.data(), sc.bm.data(), sc.pg.data(),
                      sc.ml.data(), sc.ll.data(), M + i * H, Lsum + i * H, out + i * HD);
  }
  if (tr.diag) return;
  // Rows of J against the keys of I (g_ji = g_ij).
  for (int b = 0; b < tr.nJ; ++b) {
    for (int a = 0; a < tr.nI; ++a) {
      sc.keys[a] = tr.vi[a];
      sc.gk[a] = sc.G[a * kBlock + b];
    }
    const int64_t j = vj[b];
    row_update<T, DC>(P, P.q + j * HD, sc.keys.data(), sc.gk.data(), tr.nI, sc.S.data(), sc.bm.data(),
                      sc.pg.data(), sc.ml.data(), sc.ll.data(), M + j * H, Lsum + j * H, out + j * HD);
  }
}

template <class T, int DC>
void attention_fwd_phases(const AttnProblem<T>& P, const gt::MlpView<T>& mv, const Schedule& sch, int64_t R, T* out,
                        T* lse) {
  const int64_t H = P.H;
  const int64_t D = DC > 0 ? DC : P.D;
  std::vector<T> Lsum(static_cast<size_t>(R * H), T(0));  // un-gated running sums; running max kept in lse
  T* L = Lsum.data();
  const int nt = num_threads();
#pragma omp parallel num_threads(nt)
  {
    FwdScratch<T> sc(mv, H);
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        attention_fwd_tile<T, DC>(P, mv, sch.tasks[t], sc, out, lse, L);
      }
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        // Rows never updated (padding, lone atoms) keep m = −inf, l = 0: out 0 and lse −inf.
        lse[r * H + h] = gt::online_softmax_finish<T>(lse[r * H + h], L[r * H + h], out + (r * H + h) * D,
                                                      static_cast<int>(D));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward.

template <class T>
struct BwdProblem : AttnProblem<T> {
  const T* dout;
  const T* lse;
  const T* delta;  // [R][H]: delta = Σ_d dout·out per head
  T* dq;
  T* dk;
  T* dv;
  double* dpos;
};

template <class T>
struct BwdScratch {
  TaskRows rows;
  std::vector<T> ws, bws;
  std::vector<T> hs;  // [8][Hp] per-head scratch of pair_backward, zero-initialised
  BwdScratch(const gt::MlpView<T>& mv, int64_t H)
      : ws(gt::tile_ws_size<T, kTilePairs>(mv)), bws(std::max<int64_t>(gt::tile_bws_size<T, kTilePairs>(mv), 1)),
        hs(8 * padded_heads<T>(H), T(0)) {}
};

// Attention backward of the pair {i, j} with gate g, all heads, both directions (query i / key j and
// query j / key i). Returns dg_ij + dg_ji (d loss / d g summed over heads). hs: [8][Hp] scratch, zero-
// initialised once (the padded heads h >= H keep c = delta = 0 and so contribute nothing).
// Three loops over the heads, each vectorisable: dot products; probabilities (fast_exp) and dS;
// gradient updates.
template <class T, int DC>
T pair_backward(const BwdProblem<T>& P, int64_t i, int64_t j, T g, T* hs) {
  const int64_t H = P.H;
  const int64_t Hp = padded_heads<T>(H);
  const int64_t D = DC > 0 ? DC : P.D;
  const int64_t HD = H * D;
  const T scale = P.scale;
  const T* __restrict qi = P.q + i * HD;
  const T* __restrict ki = P.k + i * HD;
  const T* __restrict vi = P.v + i * HD;
  const T* __restrict doi = P.dout + i * HD;
  const T* __restrict qj = P.q + j * HD;
  const T* __restrict kj = P.k + j * HD;
  const T* __restrict vj = P.v + j * HD;
  const T* __restrict doj = P.dout + j * HD;
  const T* lse_i = P.lse + i * H;
  const T* lse_j = P.lse + j * H;
  const T* delta_i = P.delta + i * H;
  const T* delta_j = P.delta + j * H;
  T* __restrict dqi = P.dq + i * HD;
  T* __restrict dki = P.dk + i * HD;
  T* __restrict dvi = P.dv + i * HD;
  T* __restrict dqj = P.dq + j * HD;
  T* __restrict dkj = P.dk + j * HD;
  T* __restrict dvj = P.dv + j * HD;
  T* x1 = hs;           // S_ij − lse_i, then scale·dS_ij
  T* x2 = hs + Hp;      // S_ji − lse_j, then scale·dS_ji
  T* c1 = hs + 2 * Hp;  // dA_ij = dout_i·v_j
  T* c2 = hs + 3 * Hp;  // dA_ji = dout_j·v_i
  T* e1 = hs + 4 * Hp;  // P_ij·g
  T* e2 = hs + 5 * Hp;  // P_ji·g
  T* delta1 = hs + 6 * Hp;  // delta_i = dout_i·out_i
  T* delta2 = hs + 7 * Hp;  // delta_j
  if constexpr (kAcrossHeads<DC>) {
    GT_SIMD
    for (int64_t h = 0; h < H; ++h) {
      T s1 = T(0), s2 = T(0), dA1 = T(0), dA2 = T(0);
      for (int64_t d = 0; d < DC; ++d) {
        const int64_t o = h * DC + d;
        s1 += qi[o] * kj[o];
        s2 += qj[o] * ki[o];
        dA1 += doi[o] * vj[o];
        dA2 += doj[o] * vi[o];
      }
      x1[h] = s1 * scale - lse_i[h];
      x2[h] = s2 * scale - lse_j[h];
      c1[h] = dA1;
      c2[h] = dA2;
      delta1[h] = delta_i[h];
      delta2[h] = delta_j[h];
    }
  } else {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = h * D;
      T s1, s2, dA1, dA2;
      dot4<T, DC>(qi + o, kj + o, qj + o, ki + o, doi + o, vj + o, doj + o, vi + o, D, s1, s2, dA1, dA2);
      x1[h] = s1 * scale - lse_i[h];
      x2[h] = s2 * scale - lse_j[h];
      c1[h] = dA1;
      c2[h] = dA2;
      delta1[h] = delta_i[h];
      delta2[h] = delta_j[h];
    }
  }
  T dg = T(0);
  GT_SIMD_REDUCE(dg)
  for (int64_t h = 0; h < Hp; ++h) {
    const T p1 = gt::fast_exp(x1[h]);  // P_ij
    const T p2 = gt::fast_exp(x2[h]);  // P_ji
    dg += p1 * c1[h] + p2 * c2[h];
    x1[h] = scale * p1 * (g * c1[h] - delta1[h]);
    x2[h] = scale * p2 * (g * c2[h] - delta2[h]);
    e1[h] = p1 * g;
    e2[h] = p2 * g;
  }
  if constexpr (kAcrossHeads<DC>) {
    GT_SIMD
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t d = 0; d < DC; ++d) {
        const int64_t o = h * DC + d;
        dqi[o] += x1[h] * kj[o];
        dkj[o] += x1[h] * qi[o];
        dvj[o] += e1[h] * doi[o];
        dqj[o] += x2[h] * ki[o];
        dki[o] += x2[h] * qj[o];
        dvi[o] += e2[h] * doj[o];
      }
    }
  } else {
    for (int64_t h = 0; h < H; ++h) {
      const T a1 = x1[h], a2 = x2[h], b1 = e1[h], b2 = e2[h];
      const int64_t o = h * D;
      GT_SIMD
      for (int64_t d = 0; d < D; ++d) {
        dqi[o + d] += a1 * kj[o + d];
        dkj[o + d] += a1 * qi[o + d];
        dvj[o + d] += b1 * doi[o + d];
        dqj[o + d] += a2 * ki[o + d];
        dki[o + d] += a2 * qj[o + d];
        dvi[o + d] += b2 * doj[o + d];
      }
    }
  }
  return dg;
}

template <class T, int DC>
void attention_bwd_tile(const BwdProblem<T>& P, const gt::MlpView<T>& mv, const PairTask& task, BwdScratch<T>& sc,
                        T* grad) {
  TaskRows& tr = sc.rows;
  if (!tr.load(task, P.valid)) return;
  const int64_t* vj = tr.rows_j();
  T x[kTilePairs], y[kTilePairs], dy[kTilePairs], dx[kTilePairs];
  double gi[kTilePairs][3];
  for (int c0 = 0; c0 < tr.npairs; c0 += kTilePairs) {
    const int n = std::min(kTilePairs, tr.npairs - c0);
    for (int p = 0; p < kTilePairs; ++p) {  // padding pairs of the last tile: rinv 0, no gradient
      x[p] = T(0);
      dy[p] = T(0);
    }
    for (int p = 0; p < n; ++p) {
      x[p] = gt::inverse_distance<T>(P.pos + 3 * tr.vi[tr.pa[c0 + p]], P.pos + 3 * vj[tr.pb[c0 + p]], gi[p]);
    }
    gt::mlp_forward_simd<T, kTilePairs>(mv, x, sc.ws.data(), y);
    for (int p = 0; p < n; ++p) {
      const int64_t i = tr.vi[tr.pa[c0 + p]];
      const int64_t j = vj[tr.pb[c0 + p]];
      dy[p] = T(2) * y[p] * pair_backward<T, DC>(P, i, j, y[p] * y[p], sc.hs.data());  // dL/dψ = 2ψ·dg
    }
    gt::mlp_backward_simd<T, kTilePairs>(mv, x, sc.ws.data(), dy, grad, sc.bws.data(), dx);
    for (int p = 0; p < n; ++p) {
      double* dpi = P.dpos + 3 * tr.vi[tr.pa[c0 + p]];
      double* dpj = P.dpos + 3 * vj[tr.pb[c0 + p]];
      for (int c = 0; c < 3; ++c) {
        dpi[c] += dx[p] * gi[p][c];
        dpj[c] -= dx[p] * gi[p][c];
      }
    }
  }
}

template <class T, int DC>
void attention_bwd_phases(const BwdProblem<T>& P, const gt::MlpView<T>& mv, const Schedule& sch,
                        std::vector<T>& partials, int nt) {
  const int64_t gsize = mv.grad_size;
#pragma omp parallel num_threads(nt)
  {
    BwdScratch<T> sc(mv, P.H);
    T* grad = partials.data() + static_cast<int64_t>(thread_id()) * gsize;
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        attention_bwd_tile<T, DC>(P, mv, sch.tasks[t], sc, grad);
      }
    }
  }
}

// Dispatch on the head dimension: small powers of two get a compile-time D.
template <class F>
void dispatch_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    default: f(std::integral_constant<int, 0>()); break;
  }
}

template <class T>
void attention_fwd_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                         at::TensorList psi, const Schedule& sch, const std::optional<at::Tensor>& valid,
                         double scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2);
  PackedMlp<T> pk = pack_mlp<T>(psi, gt::kActRelu, gt::kActNone);
  AttnProblem<T> P{q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), pos.data_ptr<double>(),
                   valid.has_value() ? valid->data_ptr<bool>() : nullptr, H, D, static_cast<T>(scale)};
  dispatch_head_dim(D, [&](auto dc) {
    attention_fwd_phases<T, decltype(dc)::value>(P, pk.view, sch, R, out.data_ptr<T>(), lse.data_ptr<T>());
  });
}

// delta[r][h] = dout_r,h · out_r,h
template <class T>
void compute_delta(const T* po, const T* pd, int64_t R, int64_t H, int64_t D, T* pD) {
  const int nt = num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t h = 0; h < H; ++h) {
      T s = T(0);
      const int64_t o = (r * H + h) * D;
      for (int64_t d = 0; d < D; ++d) s += pd[o + d] * po[o + d];
      pD[r * H + h] = s;
    }
  }
}

template <class T>
std::vector<at::Tensor> attention_bwd_typed(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& pos, at::TensorList psi,
                                            const Schedule& sch, const std::optional<at::Tensor>& valid,
                                            double scale, const at::Tensor& out, const at::Tensor& lse,
                                            at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dpos) {
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2);
  PackedMlp<T> pk = pack_mlp<T>(psi, gt::kActRelu, gt::kActNone);
  std::vector<T> delta(static_cast<size_t>(R * H));
  compute_delta<T>(out.data_ptr<T>(), dout.data_ptr<T>(), R, H, D, delta.data());
  BwdProblem<T> P;
  static_cast<AttnProblem<T>&>(P) = AttnProblem<T>{
      q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), pos.data_ptr<double>(),
      valid.has_value() ? valid->data_ptr<bool>() : nullptr, H, D, static_cast<T>(scale)};
  P.dout = dout.data_ptr<T>();
  P.lse = lse.data_ptr<T>();
  P.delta = delta.data();
  P.dq = dq.data_ptr<T>();
  P.dk = dk.data_ptr<T>();
  P.dv = dv.data_ptr<T>();
  P.dpos = dpos.data_ptr<double>();
  const int nt = num_threads();
  const int64_t gsize = pk.view.grad_size;
  std::vector<T> partials(static_cast<size_t>(nt * gsize), T(0));
  dispatch_head_dim(D, [&](auto dc) { attention_bwd_phases<T, decltype(dc)::value>(P, pk.view, sch, partials, nt); });
  const std::vector<T> total = reduce_partials<T>(partials, nt, gsize);
  return unpack_mlp_grad<T>(pk.view, total.data(), psi);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& pos, at::TensorList psi,
                                                     const at::Tensor& seg, const std::optional<at::Tensor>& valid,
                                                     double scale) {
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2);
  at::Tensor out = at::zeros({R, H, D}, q.options());
  at::Tensor lse = at::full({R, H}, -std::numeric_limits<double>::infinity(), q.options());
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtkernels attention_fwd", [&] {
    attention_fwd_typed<scalar_t>(q, k, v, pos, psi, sch, valid, scale, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> run_attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, double scale,
    const at::Tensor& out, const at::Tensor& lse) {
  at::Tensor dq = at::zeros_like(q);
  at::Tensor dk = at::zeros_like(k);
  at::Tensor dv = at::zeros_like(v);
  at::Tensor dpos = at::zeros_like(pos);
  std::vector<at::Tensor> dpsi;
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gtkernels attention_bwd", [&] {
    dpsi = attention_bwd_typed<scalar_t>(dout, q, k, v, pos, psi, sch, valid, scale, out, lse, dq, dk, dv, dpos);
  });
  return {dq, dk, dv, dpos, dpsi};
}

}  // namespace gtk
