// block_programs.h — the CUDA kernels' bodies, one CUDA block ("program") at a time, written against a small
// block interface so that the same code runs on the GPU (kernels/*.cu) and, serially, on the host
// (emulation.cpp: the test suite executes every line below on CPU tensors). No torch headers; plain pointers.
//
// Block interface `Blk` (DeviceBlock in kernels/device_block.cuh, HostBlock in emulation.cpp):
//   b.size()                  threads of the block
//   b.for_each_thread(f)      f(t) for every thread t (on the GPU: each thread runs f(threadIdx.x))
//   b.sync()                  barrier (__syncthreads)
//   b.mma_tf32(A, lda, B, ldb, C, ldc, M, N, K)
//                             C = A·B, float operands rounded to TF32, float accumulation, by the whole block
//                             (tensor cores: WMMA 16×16×8 tiles on the GPU); then a barrier. M, N multiples of
//                             16, K of 8, leading dimensions of 4, tile origins 32-byte aligned.
// Rules that keep the emulation faithful: no warp intrinsics; nothing carried from one phase (between two
// barriers) to the next but shared or global memory; within a phase no thread reads what another thread
// writes in that phase (the emulation runs threads forwards and backwards to check results do not change).
//
// Work split (docs/semantics.md §4). Rows are the "segments of rows" layout of csrc/ops.cpp. A program owns a
// tile of kRows consecutive rows [r0, r1) of one molecule (rows [s, e)), derived from the program index and seg on the
// device (tile_of: no tile table, no host copy of seg; bad seg values are clamped, oversized molecules get NaN).
//   attention forward : the tile's rows are queries; loop over key tiles; ψω evaluated once per (query, key)
//                       pair on the pair tile (hidden layers as tile matmuls in shared memory) and reused by
//                       every head; un-gated online softmax (running max m, sum l) with the gated numerator
//                       Σ exp(S − m)·g·V kept in `out`; one read-modify-write of the state per key tile.
//   attention backward: the tile's rows J play both roles. For every tile I of the molecule: dV_J, dK_J
//                       (J as keys of the queries I) and dQ_J (J as queries of the keys I) with
//                       delta_i = Σ_d dO_i·O_i (precomputed), dS = P ⊙ (g ⊙ dO Vᵀ − delta); dg_ij + dg_ji over
//                       all heads, back through ψω (dψ = 2ψ·dg) to rinv and to the positions of J. Every output row
//                       is written by one program and one thread only: no atomics, deterministic.
//                       The ψω weight gradients go to the program's own partial buffer (summed by the glue);
//                       a pair of two different tiles is seen by both of their programs, so it is added with
//                       weight ½ (exact: g_ij = g_ji); a pair within one tile is listed once (below).
//   encoding          : s_i = Σ_j φ(rinv_ij) over valid j including i (rinv_ii = 0); backward with upstream
//                       ds_i + ds_j per pair (again ½ for the weights).
// Precision: exact scalar FMA by default; the hidden h→h layers of ψω/φ on TF32 tensor cores when the glue
// enables MmaWeights (float only: precision="tf32", or float16/bfloat16 inputs).
// On a diagonal tile (I = J: a whole QM9 molecule) ψω/φ runs once per unordered pair and is mirrored, forward
// and backward. Nothing N×N is written to global memory: pair tiles live in shared memory.
#pragma once

#include <type_traits>

#include "../pair_math.h"

#if defined(__CUDACC__)
#define GT_BLOCK __device__
#else
#define GT_BLOCK
#endif

namespace gt {
namespace blk {

constexpr int kRows = 32;      // rows per tile (queries and keys); QM9 molecules (≤ 29 atoms) are one tile
constexpr int kThreads = 128;  // threads per program
constexpr int kMinPrograms = 2;  // programs per SM the kernels are compiled for (__launch_bounds__), as the
                                 // glue's shared-memory target (glue.h kSmemTarget) assumes
static_assert(kRows <= 256, "pair lists store row indices as uint8");

// ---------------------------------------------------------------------------------------------------------
// Shared-memory layout. Every program carves the same buffer; the glue sizes it with smem_bytes().
template <class T>
struct Smem {
  double* pos_i;    // [kRows][3] positions of the rows of tile I (valid rows, compacted)
  double* pos_j;    // [kRows][3]
  int64_t* row_i;   // [kRows] global row index of the valid rows of tile I
  int64_t* row_j;   // [kRows]
  int* count;       // [2] number of valid rows in I and J
  uint8_t* pa;      // [kRows²] pair list of the tile: row pa[p] of I, row pb[p] of J
  uint8_t* pb;
  T* x;             // [kRows²] rinv of each listed pair (0 for i = j)
  T* yc;            // [kRows²] ψ / φ output of each listed pair
  T* u;             // [kRows²] upstream gradient of each listed pair's MLP output (backward)
  T* dxc;           // [kRows²] d/d rinv of each listed pair (backward)
  T* y;             // [kRows][kRows] ψ / φ output of every (i, j) of the tile (the list, mirrored)
  T* dx;            // [kRows][kRows] d/d rinv of every (i, j) (backward)
  T* z;             // [L][chunk][S] pre-activations of a chunk of pairs
  T* a;             // [L][chunk][S] activations
  T* dz;            // [2][chunk][S] backward ping-pong
};

// 32-byte alignment: what tensor-core (WMMA) tile loads need.
GT_HD inline size_t align32(size_t x) { return (x + 31) / 32 * 32; }

// Bytes of shared memory for MLPs of n_layers layers at most `width` wide, `chunk` pairs at a time. The same
// function places the arrays (carve) and sizes them (glue), so the two cannot disagree.
template <class T>
GT_HD inline size_t carve(char* base, Smem<T>* sm, int n_layers, int width, int chunk) {
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* p = base == nullptr ? nullptr : base + off;
    off = align32(off + bytes);
    return p;
  };
  const size_t pairs = static_cast<size_t>(kRows) * kRows;
  const size_t tile = static_cast<size_t>(chunk) * width;
  Smem<T> s;
  s.pos_i = reinterpret_cast<double*>(take(sizeof(double) * 3 * kRows));
  s.pos_j = reinterpret_cast<double*>(take(sizeof(double) * 3 * kRows));
  s.row_i = reinterpret_cast<int64_t*>(take(sizeof(int64_t) * kRows));
  s.row_j = reinterpret_cast<int64_t*>(take(sizeof(int64_t) * kRows));
  s.count = reinterpret_cast<int*>(take(sizeof(int) * 2));
  s.pa = reinterpret_cast<uint8_t*>(take(pairs));
  s.pb = reinterpret_cast<uint8_t*>(take(pairs));
  s.x = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.yc = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.u = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.dxc = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.y = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.dx = reinterpret_cast<T*>(take(sizeof(T) * pairs));
  s.z = reinterpret_cast<T*>(take(sizeof(T) * n_layers * tile));
  s.a = reinterpret_cast<T*>(take(sizeof(T) * n_layers * tile));
  s.dz = reinterpret_cast<T*>(take(sizeof(T) * 2 * tile));
  if (sm != nullptr) *sm = s;
  return off;
}

template <class T>
inline size_t smem_bytes(int n_layers, int width, int chunk) {
  return carve<T>(nullptr, nullptr, n_layers, width, chunk);
}

// Widest layer of an MLP: the row stride S of the chunk tiles.
template <class T>
GT_HD inline int mlp_width(const MlpView<T>& m) {
  int w = 1;
  for (int l = 0; l < m.n_layers; ++l) w = m.out[l] > w ? m.out[l] : w;
  return w;
}

// Tensor-core operands of the hidden h→h layers (float only, opt-in): Wᵀ zero-padded to [kp[l]][np[l]]
// (kp = in rounded up to 8, np = out rounded up to 16); wt[l] == nullptr for the layers that stay scalar
// (the first, 1 → h, and the last, h → 1: a few percent of the flops).
struct MmaWeights {
  const float* wt[kMaxLayers] = {};
  int kp[kMaxLayers] = {};
  int np[kMaxLayers] = {};
  bool enabled = false;
};

GT_HD inline int round16(int x) { return (x + 15) / 16 * 16; }

// Row stride of the chunk tiles: the widest layer (rounded up to 16 for the tensor-core tiles).
template <class T>
GT_HD inline int tile_stride(const MlpView<T>& m, const MmaWeights& mma) {
  return mma.enabled ? round16(mlp_width(m)) : mlp_width(m);
}

// ---------------------------------------------------------------------------------------------------------
// Tiles. Program p is tile t = p mod T of molecule b = p / T, with T = tiles_per_mol programs per molecule,
// which the glue sizes from host values only (FlashAttention's grid of B × ceil(max_seqlen / block)):
// T = ceil(min(max_atoms, R) / kRows), at least 1. The tile's rows are r0 = min(s + t·kRows, e),
// r1 = min(r0 + kRows, e) of the molecule's rows [s, e); tiles past the molecule's end are empty (r0 = r1)
// and do nothing. seg is read as it is: on a GPU nobody has checked it (that would need a host copy), so
// s = clamp(seg[b], 0, R) and e = clamp(seg[b + 1], s, R), and no seg value makes a program read or write
// outside rows [0, R). A molecule with more rows than max_atoms, which the grid may not cover, is poisoned
// rather than silently wrong: its first program writes NaN into every output row of the molecule (and into its
// own partial-gradient row), its other programs do nothing.
struct Segments {
  const int64_t* seg;     // [B + 1]: molecule b owns rows seg[b] .. seg[b + 1] − 1
  int64_t n_rows;         // R
  int64_t max_atoms;      // the host's bound of seg[b + 1] − seg[b]
  int64_t tiles_per_mol;  // T ≥ 1
};

struct Tile {
  int64_t r0, r1, s, e;
  bool oversized;  // e − s > max_atoms: the molecule's outputs are NaN
  bool first;      // t = 0: the program that writes them
};

GT_HD inline int64_t clamp_rows(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

GT_HD inline Tile tile_of(const Segments& g, int64_t program) {
  const int64_t b = program / g.tiles_per_mol, t = program - b * g.tiles_per_mol;
  Tile tl;
  tl.s = clamp_rows(g.seg[b], 0, g.n_rows);
  tl.e = clamp_rows(g.seg[b + 1], tl.s, g.n_rows);
  tl.r0 = clamp_rows(tl.s + t * kRows, tl.s, tl.e);
  tl.r1 = clamp_rows(tl.r0 + kRows, tl.r0, tl.e);
  tl.oversized = tl.e - tl.s > g.max_atoms;
  tl.first = t == 0;
  return tl;
}

template <class V>
GT_HD inline V quiet_nan() {
  return static_cast<V>(NAN);
}

// x[begin·width .. end·width) = NaN: the rows [begin, end) of a row-major output of `width` values per row.
template <class V, class Blk>
GT_BLOCK void poison_rows(Blk& b, V* x, int64_t begin, int64_t end, int64_t width) {
  b.for_each_thread([&](int t) {
    for (int64_t i = begin * width + t; i < end * width; i += b.size()) x[i] = quiet_nan<V>();
  });
}

// ---------------------------------------------------------------------------------------------------------
// Arguments. Tensors are contiguous; rows are the segments-of-rows layout; T is float or double.
template <class T>
struct AttentionArgs {
  const T* q;            // [R, H, D]
  const T* k;            // [R, H, D]
  const T* v;            // [R, H, D]
  const double* pos;     // [R, 3]
  const bool* valid;     // [R] or nullptr (every row an atom)
  Segments segs;         // the molecules' rows (tile_of)
  int H, D;
  T scale;
  MlpView<T> psi;        // hidden ReLU, no output activation; g = ψ²
  MmaWeights mma;        // TF32 tensor-core path of ψ's hidden layers (float, opt-in)
  int chunk;             // pairs per ψ chunk in shared memory (a multiple of 16 with mma)
  // forward: out [R, H, D] (zeros in, the gated numerator during the loop, O after), lse [R, H] (−inf in; the
  // running max during the loop, m + log l after), lsum [R, H] (zeros in; the running sum l)
  T* out;
  T* lse;
  T* lsum;
  // backward: dout [R, H, D], out-derived delta [R, H] = Σ_d dout·out, the forward's lse; outputs dq, dk, dv
  // [R, H, D] and dpos [R, 3] (zeros in), grad_partial [B·tiles_per_mol][psi.grad_size] (zeros in)
  const T* dout;
  const T* delta;
  const T* lse_in;
  T* dq;
  T* dk;
  T* dv;
  double* dpos;
  T* grad_partial;
};

template <class T>
struct EncodingArgs {
  const double* pos;     // [R, 3]
  const bool* valid;     // [R] or nullptr
  Segments segs;
  MlpView<T> phi;        // hidden GELU, output GELU
  MmaWeights mma;
  int chunk;
  T* s;                  // forward output [R] (zeros in)
  const T* ds;           // backward upstream [R]
  double* dpos;          // [R, 3] (zeros in)
  T* grad_partial;       // [B·tiles_per_mol][phi.grad_size] (zeros in)
};

// ---------------------------------------------------------------------------------------------------------
// Loads the valid rows of [r0, r1) (compacted, in order) and their positions into row/pos; count = how many.
template <class Blk>
GT_BLOCK void load_rows(Blk& b, int64_t r0, int64_t r1, const bool* valid, const double* pos, int64_t* row,
                        double* p, int* count) {
  b.sync();  // every thread has read the previous count and rows
  b.for_each_thread([&](int t) {
    if (t != 0) return;
    int n = 0;
    for (int64_t r = r0; r < r1; ++r) {
      if (valid != nullptr && !valid[r]) continue;
      row[n] = r;
      p[3 * n + 0] = pos[3 * r + 0];
      p[3 * n + 1] = pos[3 * r + 1];
      p[3 * n + 2] = pos[3 * r + 2];
      ++n;
    }
    *count = n;
  });
  b.sync();
}

// The pair list of the tile I × J: pa/pb and the MLP inputs x (rinv; 0 for i = j); returns its length.
// Off-diagonal tiles list every (i, j) as p = i·nJ + j. A diagonal tile (I = J) lists each unordered pair once,
// i < j, plus (i, i) when with_self (the encoding's self term): g_ij = g_ji, so ψ/φ is evaluated once per pair
// and mirrored (expand). Index of (i, j) in the triangle of n rows: row i starts at i(2n − i − 1)/2 (i < j) or
// i(2n − i + 1)/2 (i ≤ j).
GT_HD inline int tri_index(int i, int j, int n, bool with_self) {
  return with_self ? i * (2 * n - i + 1) / 2 + (j - i) : i * (2 * n - i - 1) / 2 + (j - i - 1);
}

template <class T, class Blk>
GT_BLOCK int pair_list(Blk& b, const Smem<T>& sm, int nI, int nJ, bool diagonal, bool with_self) {
  b.for_each_thread([&](int t) {
    for (int q = t; q < nI * nJ; q += b.size()) {
      const int i = q / nJ, j = q - i * nJ;
      if (diagonal && (with_self ? i > j : i >= j)) continue;
      const int p = diagonal ? tri_index(i, j, nI, with_self) : q;
      sm.pa[p] = static_cast<uint8_t>(i);
      sm.pb[p] = static_cast<uint8_t>(j);
      sm.x[p] = (diagonal && i == j) ? T(0) : inverse_distance<T>(sm.pos_i + 3 * i, sm.pos_j + 3 * j);
    }
  });
  b.sync();
  return !diagonal ? nI * nJ : (with_self ? nI * (nI + 1) / 2 : nI * (nI - 1) / 2);
}

// dst[i·nJ + j] = the listed value of the pair {i, j} (mirrored on a diagonal tile; 0 for an unlisted i = j).
template <class T, class Blk>
GT_BLOCK void expand(Blk& b, const T* src, T* dst, int nI, int nJ, bool diagonal, bool with_self) {
  b.for_each_thread([&](int t) {
    for (int q = t; q < nI * nJ; q += b.size()) {
      const int i = q / nJ, j = q - i * nJ;
      if (!diagonal) {
        dst[q] = src[q];
      } else if (i == j && !with_self) {
        dst[q] = T(0);
      } else {
        dst[q] = src[i <= j ? tri_index(i, j, nI, with_self) : tri_index(j, i, nI, with_self)];
      }
    }
  });
  b.sync();
}

// MLP forward by the whole block (the CPU kernels' mlp_forward_simd is one thread's SIMD tile) on n ≤ chunk
// scalars x[0..n): layer l's pre-activations z[l][p][o] and activations a[l][p][o]
// (row stride S) stay in shared memory for the backward. One thread per (pair, output unit); the hidden
// layers are small matmuls Z_l = A_{l−1} W_lᵀ + b_l, on tensor cores (TF32) for the layers mma holds. With mma
// the columns from `out` up to the padded width are written as 0 (act(0) = 0), the K padding of the next
// layer's matmul.
template <class T, class Blk>
GT_BLOCK void mlp_forward_block(Blk& b, const MlpView<T>& m, const MmaWeights& mma, const T* x, int n, T* z, T* a,
                               int S, int chunk) {
  const int L = m.n_layers;
  for (int l = 0; l < L; ++l) {
    const int no = m.out[l], ni = m.in[l], ld = m.ld[l];
    const int act = (l < L - 1) ? m.hidden_act : m.out_act;
    const T* wt = m.wt[l];  // Wᵀ [in][ld]: neighbouring threads (outputs o) read neighbouring weights
    const T* bias = m.b[l];
    T* zl = z + static_cast<size_t>(l) * chunk * S;
    T* al = a + static_cast<size_t>(l) * chunk * S;
    const T* ap = a + static_cast<size_t>(l > 0 ? l - 1 : 0) * chunk * S;
    bool tensor_cores = false;
    if constexpr (std::is_same<T, float>::value) {
      if (mma.enabled && mma.wt[l] != nullptr) {
        b.mma_tf32(ap, S, mma.wt[l], mma.np[l], zl, S, round16(n), mma.np[l], mma.kp[l]);  // zl = A·Wᵀ
        tensor_cores = true;
      }
    }
    const int width = mma.enabled ? round16(no) : no;  // outputs written (zeros beyond no)
    b.for_each_thread([&](int t) {
      for (int it = t; it < n * width; it += b.size()) {
        const int p = it / width, o = it - p * width;
        if (o >= no) {
          zl[p * S + o] = T(0);
          al[p * S + o] = T(0);
          continue;
        }
        T acc = bias[o];
        if (tensor_cores) {
          acc += zl[p * S + o];
        } else if (l == 0) {
          acc += x[p] * wt[o];
        } else {
          const T* ar = ap + p * S;
          for (int i = 0; i < ni; ++i) acc += ar[i] * wt[static_cast<size_t>(i) * ld + o];
        }
        zl[p * S + o] = acc;
        al[p * S + o] = activate(act, acc);
      }
    });
    b.sync();
  }
}

// Backward of mlp_forward_block for the upstream dy[p]: dx[p] = dy_p·∂y_p/∂x_p, and
// grad += wscale·Σ_p dy_p·∂y_p/∂θ in the flat layout of MlpView (dWᵀ [in][ld], db). Each gradient element is
// owned by one thread and sums the pairs in order: deterministic. dz: scratch [2][chunk][S].
template <class T, class Blk>
GT_BLOCK void mlp_backward_block(Blk& b, const MlpView<T>& m, const T* x, int n, const T* z, const T* a, int S,
                                int chunk, const T* dy, T wscale, T* grad, T* dz, T* dx) {
  const int L = m.n_layers;
  const size_t tile = static_cast<size_t>(chunk) * S;
  T* cur = dz;
  T* prev = dz + tile;
  b.for_each_thread([&](int t) {
    for (int p = t; p < n; p += b.size()) cur[p * S] = dy[p] * activate_grad(m.out_act, z[(L - 1) * tile + p * S]);
  });
  b.sync();
  for (int l = L - 1; l >= 0; --l) {
    const int no = m.out[l], ni = m.in[l], ld = m.ld[l];
    T* gw = grad + m.gwt[l];
    T* gbias = grad + m.gb[l];
    const T* ap = a + static_cast<size_t>(l > 0 ? l - 1 : 0) * tile;
    const T* zp = z + static_cast<size_t>(l > 0 ? l - 1 : 0) * tile;
    const T* w = m.w[l];      // W [out][ldin]: neighbouring threads (inputs i) read neighbouring weights
    const int ldin = m.ldin[l];
    b.for_each_thread([&](int t) {
      // dWᵀ[i][o] += wscale·Σ_p dz_l[p][o]·a_{l−1}[p][i] (a_{−1} = x); db[o] += wscale·Σ_p dz_l[p][o]
      for (int it = t; it < (ni + 1) * no; it += b.size()) {
        const int i = it / no, o = it - i * no;
        T acc = T(0);
        if (i < ni) {
          for (int p = 0; p < n; ++p) acc += cur[p * S + o] * (l == 0 ? x[p] : ap[p * S + i]);
          gw[static_cast<size_t>(i) * ld + o] += wscale * acc;
        } else {
          for (int p = 0; p < n; ++p) acc += cur[p * S + o];
          gbias[o] += wscale * acc;
        }
      }
      if (l > 0) {
        // dz_{l−1}[p][i] = (Σ_o dz_l[p][o]·W_l[o][i])·act'(z_{l−1}[p][i])
        for (int it = t; it < n * ni; it += b.size()) {
          const int p = it / ni, i = it - p * ni;
          T acc = T(0);
          for (int o = 0; o < no; ++o) acc += cur[p * S + o] * w[static_cast<size_t>(o) * ldin + i];
          prev[p * S + i] = acc * activate_grad(m.hidden_act, zp[p * S + i]);
        }
      } else {
        for (int p = t; p < n; p += b.size()) {
          T acc = T(0);
          for (int o = 0; o < no; ++o) acc += cur[p * S + o] * w[o];  // layer 0: in = 1, W[o][0]
          dx[p] = acc;
        }
      }
    });
    b.sync();
    T* tmp = cur;
    cur = prev;
    prev = tmp;
  }
}

// MLP outputs yc[p] of the listed pairs [0, np), chunk by chunk.
template <class T, class Blk>
GT_BLOCK void mlp_outputs(Blk& b, const MlpView<T>& m, const MmaWeights& mma, const Smem<T>& sm, int np, int S,
                          int chunk) {
  const size_t last = static_cast<size_t>(m.n_layers - 1) * chunk * S;
  for (int c0 = 0; c0 < np; c0 += chunk) {
    const int n = np - c0 < chunk ? np - c0 : chunk;
    mlp_forward_block(b, m, mma, sm.x + c0, n, sm.z, sm.a, S, chunk);
    b.for_each_thread([&](int t) {
      for (int p = t; p < n; p += b.size()) sm.yc[c0 + p] = sm.a[last + p * S];
    });
    b.sync();
  }
}

// Backward through the MLP of the listed pairs [0, np): upstream sm.u, result sm.dxc; weights with factor
// wscale (½ on off-diagonal tiles, whose pairs the other program of the pair of tiles sees too).
template <class T, class Blk>
GT_BLOCK void mlp_pair_grads(Blk& b, const MlpView<T>& m, const MmaWeights& mma, const Smem<T>& sm, int np, int S,
                             int chunk, T wscale, T* grad) {
  for (int c0 = 0; c0 < np; c0 += chunk) {
    const int n = np - c0 < chunk ? np - c0 : chunk;
    mlp_forward_block(b, m, mma, sm.x + c0, n, sm.z, sm.a, S, chunk);  // recompute the activations
    mlp_backward_block(b, m, sm.x + c0, n, sm.z, sm.a, S, chunk, sm.u + c0, wscale, grad, sm.dz, sm.dxc + c0);
  }
}

// dpos[row_j[j]] += Σ_i dx[i·nJ + j]·∂rinv_ij/∂p_j (pairs in order of i; one thread per row j).
template <class T, class Blk>
GT_BLOCK void position_grads(Blk& b, const Smem<T>& sm, int nI, int nJ, double* dpos) {
  b.for_each_thread([&](int t) {
    for (int j = t; j < nJ; j += b.size()) {
      double acc[3] = {0.0, 0.0, 0.0};
      for (int i = 0; i < nI; ++i) {
        if (sm.row_i[i] == sm.row_j[j]) continue;  // r = 0: no gradient
        double g[3];
        inverse_distance<T>(sm.pos_j + 3 * j, sm.pos_i + 3 * i, g);  // d rinv / d p_j
        const double c = static_cast<double>(sm.dx[i * nJ + j]);
        acc[0] += c * g[0];
        acc[1] += c * g[1];
        acc[2] += c * g[2];
      }
      double* d = dpos + 3 * sm.row_j[j];
      d[0] += acc[0];
      d[1] += acc[1];
      d[2] += acc[2];
    }
  });
  b.sync();
}

template <class T>
GT_HD inline T dot(const T* a, const T* b, int n) {
  T acc = T(0);
  for (int d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

// The loop of every program: load its own tile's valid rows (as I when own_is_i — queries, encoded atoms — else
// as J), then each tile of the molecule as the partner, build the pair list, and run
// body(nI, nJ, diagonal, np) on every non-empty pair of tiles. Nothing runs when the own tile has no valid row
// (an empty tile, r0 = r1, included).
template <class T, class Blk, class Body>
GT_BLOCK void over_partner_tiles(Blk& b, const Smem<T>& sm, const Tile& tl, const bool* valid, const double* pos,
                                 bool own_is_i, bool with_self, Body&& body) {
  int64_t* own_row = own_is_i ? sm.row_i : sm.row_j;
  int64_t* part_row = own_is_i ? sm.row_j : sm.row_i;
  double* own_pos = own_is_i ? sm.pos_i : sm.pos_j;
  double* part_pos = own_is_i ? sm.pos_j : sm.pos_i;
  int* own_count = sm.count + (own_is_i ? 0 : 1);
  int* part_count = sm.count + (own_is_i ? 1 : 0);
  load_rows(b, tl.r0, tl.r1, valid, pos, own_row, own_pos, own_count);
  const int n_own = *own_count;
  if (n_own == 0) return;
  for (int64_t p0 = tl.s; p0 < tl.e; p0 += kRows) {
    load_rows(b, p0, p0 + kRows < tl.e ? p0 + kRows : tl.e, valid, pos, part_row, part_pos, part_count);
    const int n_part = *part_count;
    if (n_part == 0) continue;
    const bool diagonal = p0 == tl.r0;
    const int nI = own_is_i ? n_own : n_part, nJ = own_is_i ? n_part : n_own;
    body(nI, nJ, diagonal, pair_list(b, sm, nI, nJ, diagonal, with_self));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Attention forward, program `tile`.
template <class T, class Blk>
GT_BLOCK void attention_fwd_program(Blk& b, const AttentionArgs<T>& A, int64_t tile, char* smem) {
  const MlpView<T>& m = A.psi;
  const int S = tile_stride(m, A.mma), chunk = A.chunk, H = A.H, D = A.D;
  const Tile tl = tile_of(A.segs, tile);
  if (tl.oversized) {
    if (tl.first) {
      poison_rows(b, A.out, tl.s, tl.e, static_cast<int64_t>(H) * D);
      poison_rows(b, A.lse, tl.s, tl.e, H);
    }
    return;
  }
  Smem<T> sm;
  carve<T>(smem, &sm, m.n_layers, S, chunk);
  over_partner_tiles(b, sm, tl, A.valid, A.pos, true, false,
                     [&](int nI, int nJ, bool diagonal, int np) {
    mlp_outputs(b, m, A.mma, sm, np, S, chunk);
    expand(b, sm.yc, sm.y, nI, nJ, diagonal, false);
    // Online softmax over this key tile, one thread per (query, head); heads fastest (coalesced q/k/v).
    b.for_each_thread([&](int t) {
      for (int it = t; it < nI * H; it += b.size()) {
        const int i = it / H, h = it - i * H;
        const int64_t r = sm.row_i[i];
        const T* qi = A.q + (r * H + h) * D;
        T sc[kRows];
        T mx = A.lse[r * H + h];
        const T m_old = mx;
        for (int j = 0; j < nJ; ++j) {
          const int64_t rj = sm.row_j[j];
          if (rj == r) {
            sc[j] = neg_inf<T>();
            continue;
          }
          sc[j] = A.scale * dot(qi, A.k + (rj * H + h) * D, D);
          mx = gt_max(mx, sc[j]);
        }
        if (!(mx > neg_inf<T>())) continue;  // no key so far
        const T c = gt_exp(m_old - mx);      // rescale of the old state (0 when m_old = −inf)
        T l = A.lsum[r * H + h] * c;
        for (int j = 0; j < nJ; ++j) {
          const T p = gt_exp(sc[j] - mx);  // un-gated probability numerator
          l += p;
          const T y = sm.y[i * nJ + j];
          sc[j] = p * y * y;  // gated weight p·g
        }
        A.lsum[r * H + h] = l;
        A.lse[r * H + h] = mx;
        T* o = A.out + (r * H + h) * D;
        for (int d = 0; d < D; ++d) {
          T acc = o[d] * c;
          for (int j = 0; j < nJ; ++j) acc += sc[j] * A.v[(sm.row_j[j] * H + h) * D + d];
          o[d] = acc;
        }
      }
    });
    b.sync();
  });
  // O = numerator / l, lse = m + log l; a row with no key keeps O = 0, lse = −inf.
  const int nI = sm.count[0];
  b.for_each_thread([&](int t) {
    for (int it = t; it < nI * H; it += b.size()) {
      const int i = it / H, h = it - i * H;
      const int64_t r = sm.row_i[i];
      const T l = A.lsum[r * H + h];
      if (!(l > T(0))) continue;
      const T inv = T(1) / l;
      T* o = A.out + (r * H + h) * D;
      for (int d = 0; d < D; ++d) o[d] *= inv;
      A.lse[r * H + h] += gt_log(l);
    }
  });
}

// Attention backward, program `tile` (rows J). grad = this program's partial ψ gradient.
template <class T, class Blk>
GT_BLOCK void attention_bwd_program(Blk& b, const AttentionArgs<T>& A, int64_t tile, char* smem) {
  const MlpView<T>& m = A.psi;
  const int S = tile_stride(m, A.mma), chunk = A.chunk, H = A.H, D = A.D;
  T* grad = A.grad_partial + tile * m.grad_size;
  const Tile tl = tile_of(A.segs, tile);
  if (tl.oversized) {
    if (tl.first) {
      const int64_t HD = static_cast<int64_t>(H) * D;
      poison_rows(b, A.dq, tl.s, tl.e, HD);
      poison_rows(b, A.dk, tl.s, tl.e, HD);
      poison_rows(b, A.dv, tl.s, tl.e, HD);
      poison_rows(b, A.dpos, tl.s, tl.e, 3);
      poison_rows(b, grad, 0, 1, m.grad_size);
    }
    return;
  }
  Smem<T> sm;
  carve<T>(smem, &sm, m.n_layers, S, chunk);
  over_partner_tiles(b, sm, tl, A.valid, A.pos, false, false,
                     [&](int nI, int nJ, bool diagonal, int np) {
    mlp_outputs(b, m, A.mma, sm, np, S, chunk);
    expand(b, sm.yc, sm.y, nI, nJ, diagonal, false);
    b.for_each_thread([&](int t) {
      // dψ_ij = 2ψ_ij·(dg_ij + dg_ji), dg_ij = Σ_h P_ij·(dO_i·V_j): one thread per listed pair, heads in order.
      for (int p = t; p < np; p += b.size()) {
        const int64_t ri = sm.row_i[sm.pa[p]], rj = sm.row_j[sm.pb[p]];
        T dg = T(0);
        if (ri != rj) {
          for (int h = 0; h < H; ++h) {
            const int64_t ih = ri * H + h, jh = rj * H + h;
            const T pij = gt_exp(A.scale * dot(A.q + ih * D, A.k + jh * D, D) - A.lse_in[ih]);
            const T pji = gt_exp(A.scale * dot(A.q + jh * D, A.k + ih * D, D) - A.lse_in[jh]);
            dg += pij * dot(A.dout + ih * D, A.v + jh * D, D) + pji * dot(A.dout + jh * D, A.v + ih * D, D);
          }
        }
        sm.u[p] = T(2) * sm.yc[p] * dg;
      }
      // dV_j += Σ_i P_ij g_ij dO_i, dK_j += scale Σ_i dS_ij Q_i, dQ_j += scale Σ_i dS_ji K_i: one thread per
      // (row j, head), coefficients per i first, then one read-modify-write per output element.
      for (int it = t; it < nJ * H; it += b.size()) {
        const int j = it / H, h = it - j * H;
        const int64_t jh = sm.row_j[j] * H + h;
        T cv[kRows] = {}, ck[kRows] = {}, cq[kRows] = {};
        for (int i = 0; i < nI; ++i) {
          const int64_t ri = sm.row_i[i];
          if (ri == sm.row_j[j]) {
            cv[i] = ck[i] = cq[i] = T(0);
            continue;
          }
          const int64_t ih = ri * H + h;
          const T y = sm.y[i * nJ + j];
          const T g = y * y;
          const T pij = gt_exp(A.scale * dot(A.q + ih * D, A.k + jh * D, D) - A.lse_in[ih]);
          const T dsij = pij * (g * dot(A.dout + ih * D, A.v + jh * D, D) - A.delta[ih]);
          const T pji = gt_exp(A.scale * dot(A.q + jh * D, A.k + ih * D, D) - A.lse_in[jh]);
          const T dsji = pji * (g * dot(A.dout + jh * D, A.v + ih * D, D) - A.delta[jh]);
          cv[i] = pij * g;
          ck[i] = A.scale * dsij;
          cq[i] = A.scale * dsji;
        }
        for (int d = 0; d < D; ++d) {
          T av = T(0), ak = T(0), aq = T(0);
          for (int i = 0; i < nI; ++i) {
            const int64_t ih = sm.row_i[i] * H + h;
            av += cv[i] * A.dout[ih * D + d];
            ak += ck[i] * A.q[ih * D + d];
            aq += cq[i] * A.k[ih * D + d];
          }
          A.dv[jh * D + d] += av;
          A.dk[jh * D + d] += ak;
          A.dq[jh * D + d] += aq;
        }
      }
    });
    b.sync();
    mlp_pair_grads(b, m, A.mma, sm, np, S, chunk, diagonal ? T(1) : T(0.5), grad);
    expand(b, sm.dxc, sm.dx, nI, nJ, diagonal, false);
    position_grads(b, sm, nI, nJ, A.dpos);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Encoding forward, program `tile` (rows I): s_i = Σ_j φ(rinv_ij), j over the molecule's valid rows, j = i
// included (rinv = 0).
template <class T, class Blk>
GT_BLOCK void encoding_fwd_program(Blk& b, const EncodingArgs<T>& E, int64_t tile, char* smem) {
  const MlpView<T>& m = E.phi;
  const int S = tile_stride(m, E.mma), chunk = E.chunk;
  const Tile tl = tile_of(E.segs, tile);
  if (tl.oversized) {
    if (tl.first) poison_rows(b, E.s, tl.s, tl.e, 1);
    return;
  }
  Smem<T> sm;
  carve<T>(smem, &sm, m.n_layers, S, chunk);
  over_partner_tiles(b, sm, tl, E.valid, E.pos, true, true,
                     [&](int nI, int nJ, bool diagonal, int np) {
    mlp_outputs(b, m, E.mma, sm, np, S, chunk);
    expand(b, sm.yc, sm.y, nI, nJ, diagonal, true);
    b.for_each_thread([&](int t) {
      for (int i = t; i < nI; i += b.size()) {
        T acc = T(0);
        for (int j = 0; j < nJ; ++j) acc += sm.y[i * nJ + j];
        E.s[sm.row_i[i]] += acc;
      }
    });
    b.sync();
  });
}

// Encoding backward, program `tile` (rows J): pairs (i, j) with upstream ds_i + ds_j; weights with ½.
template <class T, class Blk>
GT_BLOCK void encoding_bwd_program(Blk& b, const EncodingArgs<T>& E, int64_t tile, char* smem) {
  const MlpView<T>& m = E.phi;
  const int S = tile_stride(m, E.mma), chunk = E.chunk;
  T* grad = E.grad_partial + tile * m.grad_size;
  const Tile tl = tile_of(E.segs, tile);
  if (tl.oversized) {
    if (tl.first) {
      poison_rows(b, E.dpos, tl.s, tl.e, 3);
      poison_rows(b, grad, 0, 1, m.grad_size);
    }
    return;
  }
  Smem<T> sm;
  carve<T>(smem, &sm, m.n_layers, S, chunk);
  over_partner_tiles(b, sm, tl, E.valid, E.pos, false, true,
                     [&](int nI, int nJ, bool diagonal, int np) {
    b.for_each_thread([&](int t) {
      // φ(rinv_ij) is in s_i and in s_j (once in s_i for the self term i = j)
      for (int p = t; p < np; p += b.size()) {
        const T dsi = E.ds[sm.row_i[sm.pa[p]]];
        sm.u[p] = (diagonal && sm.pa[p] == sm.pb[p]) ? dsi : dsi + E.ds[sm.row_j[sm.pb[p]]];
      }
    });
    b.sync();
    mlp_pair_grads(b, m, E.mma, sm, np, S, chunk, diagonal ? T(1) : T(0.5), grad);
    expand(b, sm.dxc, sm.dx, nI, nJ, diagonal, true);
    position_grads(b, sm, nI, nJ, E.dpos);
  });
}

}  // namespace blk
}  // namespace gt
