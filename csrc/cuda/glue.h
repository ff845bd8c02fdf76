// glue.h — the CUDA glue: the torch side of the block programs (block_programs.h): checks, dtype handling, the
// program grid, output allocation, MLP packing and the reduction of the per-program ψ/φ gradients. Shared by the
// real CUDA launcher (ops_cuda.cpp) and the host emulation (emulation.cpp), so the tests on CPU cover it too.
// <op>_glue<Launcher> is the torch entry of an op for a backend that runs the block programs; the backend
// registers its instance as <op>_cuda / <op>_emulated. A Launcher provides
//   static size_t smem_limit(const at::Device&);   bytes of dynamic shared memory one program may use
//   static bool skip_segment_checks();             true: do not check a host seg's values (the emulation's
//                                                  test hook; a GPU seg's values are never checked here)
//   template <class T> static void run_attention_fwd(const gt::blk::AttentionArgs<T>&, int64_t programs,
//                                                    size_t smem, const at::Device&);   likewise
//                                                    run_attention_bwd, run_encoding_fwd/bwd
// float16 / bfloat16 inputs are computed in float32 (loads upcast, float32 accumulation) and cast back.
//
// No host synchronisation (so that a training step can be captured in a CUDA graph): everything the host decides
// (grid size, MLP layout, shared memory) comes from shapes and host ints (max_atoms), never from tensor values;
// the MLPs are packed on their device with tensor ops; nothing is uploaded from the host. The kernels read seg
// directly (block_programs.h, tile_of). tests/test_no_host_sync.py checks these sources for host copies.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <tuple>
#include <vector>

#include "../mlp_pack.h"
#include "../op_checks.h"
#include "block_programs.h"

namespace gtk {
namespace glue {

namespace B = gt::blk;

// The programs' view of the molecules (block_programs.h, tile_of) and how many programs run: tiles_per_mol for
// each of the B molecules, tiles_per_mol = ceil(min(max_atoms, R) / kRows) ≥ 1 (a molecule has at most R rows
// once seg is clamped). Host values only: seg's length, R and max_atoms.
struct Grid {
  B::Segments segs;
  int64_t programs = 0;
};

inline Grid make_grid(const at::Tensor& seg, int64_t R, int64_t max_atoms) {
  Grid g;
  g.segs.seg = seg.data_ptr<int64_t>();
  g.segs.n_rows = R;
  g.segs.max_atoms = max_atoms;
  g.segs.tiles_per_mol = std::max<int64_t>(1, (std::min(max_atoms, R) + B::kRows - 1) / B::kRows);
  const int64_t n_mol = seg.numel() - 1;
  TORCH_CHECK(n_mol <= std::numeric_limits<int32_t>::max() / g.segs.tiles_per_mol, "gtkernels: ", n_mol,
              " molecules of up to ", g.segs.tiles_per_mol, " tiles of ", B::kRows, " rows (max_atoms = ",
              max_atoms, ", R = ", R, ") need more than 2^31 - 1 programs; split the batch");
  g.programs = n_mol * g.segs.tiles_per_mol;
  return g;
}

// seg's values are checked where they are on the host (the host emulation; its test hook turns that off), never
// copied from a GPU: there the kernels clamp them and poison the molecules larger than max_atoms.
template <class Launcher>
void check_host_segments(const at::Tensor& seg, int64_t R, int64_t max_atoms) {
  if (seg.is_cpu() && !Launcher::skip_segment_checks()) check_segment_values(seg, R, max_atoms);
}

// Pairs per MLP chunk: the largest of 64, 32, ..., min_chunk whose shared memory stays within kSmemTarget (so
// that two programs fit on one SM, as the kernels' __launch_bounds__ assume), else within the launcher's hard
// limit. `stride` is the chunk tiles' row stride (B::tile_stride).
constexpr size_t kSmemTarget = 100 * 1024;

template <class T>
int pick_chunk(int n_layers, int stride, int min_chunk, size_t limit, size_t* bytes) {
  for (const size_t budget : {std::min(limit, kSmemTarget), limit}) {
    for (int chunk = 64; chunk >= min_chunk; chunk /= 2) {
      *bytes = B::smem_bytes<T>(n_layers, stride, chunk);
      if (*bytes <= budget) return chunk;
    }
  }
  TORCH_CHECK(false, "gtkernels: the MLP (", n_layers, " layers, tile stride ", stride,
              ") does not fit the shared memory of one program (", limit, " bytes)");
  return 0;
}

// TF32 tensor cores for the hidden h→h layers of ψ/φ: opt-in for float32 inputs (precision "tf32", like
// torch's allow_tf32), always for float16/bfloat16 inputs (computed in float32; TF32 keeps more mantissa bits
// than they have). float64 never.
inline bool use_tensor_cores(at::ScalarType input_dtype, c10::string_view precision) {
  const bool tf32 = check_precision(precision);
  if (input_dtype == at::kHalf || input_dtype == at::kBFloat16) return true;
  return input_dtype == at::kFloat && tf32;
}

// The zero-padded Wᵀ of the hidden h→h layers for the tensor-core tiles (B::MmaWeights), packed on the
// parameters' device with tensor copies (layout from the shapes).
struct PackedMma {
  at::Tensor buffer;
  B::MmaWeights view;
};

template <class T>
PackedMma pack_mma(at::TensorList params, bool enabled) {
  PackedMma pk;
  if (!enabled || !std::is_same<T, float>::value) return pk;
  const int L = static_cast<int>(params.size() / 2);
  std::vector<int64_t> offset(L, -1);
  int64_t total = 0;
  for (int l = 1; l < L - 1; ++l) {
    pk.view.kp[l] = (static_cast<int>(params[2 * l].size(1)) + 7) / 8 * 8;
    pk.view.np[l] = B::round16(static_cast<int>(params[2 * l].size(0)));
    offset[l] = total;
    total += static_cast<int64_t>(pk.view.kp[l]) * pk.view.np[l];  // a multiple of 128 floats: 512-byte aligned
  }
  pk.buffer = at::zeros({std::max<int64_t>(total, 1)}, params[0].options().dtype(at::kFloat));
  for (int l = 1; l < L - 1; ++l) {
    const at::Tensor W = params[2 * l].detach();  // [out, in]
    pk.buffer.narrow(0, offset[l], static_cast<int64_t>(pk.view.kp[l]) * pk.view.np[l])
        .view({pk.view.kp[l], pk.view.np[l]})
        .narrow(0, 0, W.size(1))
        .narrow(1, 0, W.size(0))
        .copy_(W.t());
    pk.view.wt[l] = pk.buffer.data_ptr<float>() + offset[l];
  }
  pk.view.enabled = true;
  return pk;
}

// The compute dtype: float16 / bfloat16 run in float32.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

inline std::vector<at::Tensor> cast_all(at::TensorList ts, at::ScalarType dtype) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(dtype).contiguous());
  return out;
}

// Σ of the per-program partial gradients [programs, size] (float64 sum), unpacked like `params`.
template <class T>
std::vector<at::Tensor> reduce_grad(const gt::MlpView<T>& m, const at::Tensor& partial, at::TensorList params) {
  at::Tensor flat = partial.sum(0, /*keepdim=*/false, at::kDouble).to(partial.scalar_type());
  std::vector<at::Tensor> g = unpack_mlp_grad_tensor(m, flat);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i].to(params[i].scalar_type());
  return g;
}

template <class T>
const bool* valid_ptr(const std::optional<at::Tensor>& valid) {
  return valid.has_value() ? valid->data_ptr<bool>() : nullptr;
}

// What every launch needs besides the tensors: the packed MLP, its tensor-core weights, the chunk size and the
// shared memory per program.
template <class T>
struct Prepared {
  PackedMlp<T> mlp;
  PackedMma mma;
  int chunk = 0;
  size_t smem = 0;
};

template <class Launcher, class T>
Prepared<T> prepare(at::TensorList params, int hidden_act, int out_act, bool tensor_cores, const at::Device& dev) {
  Prepared<T> p;
  p.mlp = pack_mlp<T>(params, hidden_act, out_act);
  p.mma = pack_mma<T>(params, tensor_cores);
  p.chunk = pick_chunk<T>(p.mlp.view.n_layers, B::tile_stride(p.mlp.view, p.mma.view), p.mma.view.enabled ? 16 : 1,
                          Launcher::smem_limit(dev), &p.smem);
  return p;
}

// The inputs every encoding program reads: float64 pos [R, 3], valid, the molecules, φ.
template <class T>
B::EncodingArgs<T> encoding_args(const at::Tensor& pos, const std::optional<at::Tensor>& valid, const Grid& grid,
                                 const Prepared<T>& p) {
  B::EncodingArgs<T> e{};
  e.pos = pos.data_ptr<double>();
  e.valid = valid_ptr<T>(valid);
  e.segs = grid.segs;
  e.phi = p.mlp.view;
  e.mma = p.mma.view;
  e.chunk = p.chunk;
  return e;
}

// ------------------------------------------------------------------------------------------------- attention
// The inputs every attention program reads: q, k, v [R, H, D], float64 pos [R, 3], valid, the molecules,
// scale, ψ.
template <class T>
B::AttentionArgs<T> attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& pos, const std::optional<at::Tensor>& valid, const Grid& grid,
                                   double scale, const Prepared<T>& p) {
  B::AttentionArgs<T> a{};
  a.q = q.data_ptr<T>();
  a.k = k.data_ptr<T>();
  a.v = v.data_ptr<T>();
  a.pos = pos.data_ptr<double>();
  a.valid = valid_ptr<T>(valid);
  a.segs = grid.segs;
  a.H = static_cast<int>(q.size(1));
  a.D = static_cast<int>(q.size(2));
  a.scale = static_cast<T>(scale);
  a.psi = p.mlp.view;
  a.mma = p.mma.view;
  a.chunk = p.chunk;
  return a;
}

template <class Launcher, class T>
std::tuple<at::Tensor, at::Tensor> attention_fwd_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& pos, at::TensorList psi, const Grid& grid,
                                                       const std::optional<at::Tensor>& valid, double scale,
                                                       bool tensor_cores) {
  const at::Device dev = q.device();
  const Prepared<T> p = prepare<Launcher, T>(psi, gt::kActRelu, gt::kActNone, tensor_cores, dev);
  B::AttentionArgs<T> a = attention_args<T>(q, k, v, pos, valid, grid, scale, p);
  at::Tensor out = at::zeros_like(q);
  at::Tensor lse = at::full({q.size(0), q.size(1)}, -std::numeric_limits<double>::infinity(), q.options());
  at::Tensor lsum = at::zeros({q.size(0), q.size(1)}, q.options());
  a.out = out.data_ptr<T>();
  a.lse = lse.data_ptr<T>();
  a.lsum = lsum.data_ptr<T>();
  Launcher::template run_attention_fwd<T>(a, grid.programs, p.smem, dev);
  return {out, lse};
}

template <class Launcher>
std::tuple<at::Tensor, at::Tensor> attention_fwd_glue(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& pos, at::TensorList psi, const at::Tensor& seg,
                                                      const std::optional<at::Tensor>& valid, int64_t max_atoms,
                                                      double scale, c10::string_view precision) {
  const bool tc = use_tensor_cores(q.scalar_type(), precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms, /*allow_half=*/true);
  check_host_segments<Launcher>(seg, q.size(0), max_atoms);
  const Grid grid = make_grid(seg, q.size(0), max_atoms);
  const auto ct = compute_dtype(q.scalar_type());
  const at::Tensor qc = q.to(ct), kc = k.to(ct), vc = v.to(ct);
  const std::vector<at::Tensor> psic = cast_all(psi, ct);
  at::Tensor out, lse;
  if (ct == at::kDouble) {
    std::tie(out, lse) = attention_fwd_typed<Launcher, double>(qc, kc, vc, pos, psic, grid, valid, scale, false);
  } else {
    std::tie(out, lse) = attention_fwd_typed<Launcher, float>(qc, kc, vc, pos, psic, grid, valid, scale, tc);
  }
  return {out.to(q.scalar_type()), lse};  // lse stays float32 for float16 / bfloat16 inputs
}

template <class Launcher, class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> attention_bwd_typed(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const Grid& grid, const std::optional<at::Tensor>& valid, double scale,
    const at::Tensor& out, const at::Tensor& lse, bool tensor_cores) {
  const at::Device dev = q.device();
  const Prepared<T> p = prepare<Launcher, T>(psi, gt::kActRelu, gt::kActNone, tensor_cores, dev);
  B::AttentionArgs<T> a = attention_args<T>(q, k, v, pos, valid, grid, scale, p);
  const at::Tensor delta = (dout * out).sum(-1).contiguous();  // delta_i = Σ_d dO_i·O_i  [R, H]
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  at::Tensor dpos = at::zeros_like(pos);
  at::Tensor partial = at::zeros({grid.programs, p.mlp.view.grad_size}, q.options());
  a.dout = dout.data_ptr<T>();
  a.delta = delta.data_ptr<T>();
  a.lse_in = lse.data_ptr<T>();
  a.dq = dq.data_ptr<T>();
  a.dk = dk.data_ptr<T>();
  a.dv = dv.data_ptr<T>();
  a.dpos = dpos.data_ptr<double>();
  a.grad_partial = partial.data_ptr<T>();
  Launcher::template run_attention_bwd<T>(a, grid.programs, p.smem, dev);
  return {dq, dk, dv, dpos, reduce_grad(p.mlp.view, partial, psi)};
}

template <class Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> attention_bwd_glue(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, int64_t max_atoms,
    double scale, c10::string_view precision, const at::Tensor& out, const at::Tensor& lse) {
  const bool tc = use_tensor_cores(q.scalar_type(), precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms, /*allow_half=*/true);
  check_host_segments<Launcher>(seg, q.size(0), max_atoms);
  const auto ct = compute_dtype(q.scalar_type());
  check_attention_saved(q, dout, out, lse, ct);
  const Grid grid = make_grid(seg, q.size(0), max_atoms);
  const at::Tensor qc = q.to(ct), kc = k.to(ct), vc = v.to(ct), dc = dout.to(ct), oc = out.to(ct);
  const std::vector<at::Tensor> psic = cast_all(psi, ct);
  at::Tensor dq, dk, dv, dpos;
  std::vector<at::Tensor> dpsi;
  if (ct == at::kDouble) {
    std::tie(dq, dk, dv, dpos, dpsi) =
        attention_bwd_typed<Launcher, double>(dc, qc, kc, vc, pos, psic, grid, valid, scale, oc, lse, false);
  } else {
    std::tie(dq, dk, dv, dpos, dpsi) =
        attention_bwd_typed<Launcher, float>(dc, qc, kc, vc, pos, psic, grid, valid, scale, oc, lse, tc);
  }
  for (size_t i = 0; i < dpsi.size(); ++i) dpsi[i] = dpsi[i].to(psi[i].scalar_type());
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt), dpos, dpsi};
}

// -------------------------------------------------------------------------------------------------- encoding
template <class Launcher, class T>
at::Tensor encoding_fwd_typed(const at::Tensor& pos, at::TensorList phi, const Grid& grid,
                              const std::optional<at::Tensor>& valid, bool tensor_cores) {
  const at::Device dev = pos.device();
  const Prepared<T> p = prepare<Launcher, T>(phi, gt::kActGelu, gt::kActGelu, tensor_cores, dev);
  B::EncodingArgs<T> e = encoding_args<T>(pos, valid, grid, p);
  at::Tensor s = at::zeros({pos.size(0)}, phi[0].options());
  e.s = s.data_ptr<T>();
  Launcher::template run_encoding_fwd<T>(e, grid.programs, p.smem, dev);
  return s;
}

template <class Launcher>
at::Tensor encoding_fwd_glue(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                             const std::optional<at::Tensor>& valid, int64_t max_atoms, c10::string_view precision) {
  const bool tc = use_tensor_cores(phi.empty() ? at::kFloat : phi[0].scalar_type(), precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms, /*allow_half=*/true);
  check_host_segments<Launcher>(seg, pos.size(0), max_atoms);
  const Grid grid = make_grid(seg, pos.size(0), max_atoms);
  const auto dt = phi[0].scalar_type();
  const std::vector<at::Tensor> phic = cast_all(phi, compute_dtype(dt));
  const at::Tensor s = compute_dtype(dt) == at::kDouble
                           ? encoding_fwd_typed<Launcher, double>(pos, phic, grid, valid, false)
                           : encoding_fwd_typed<Launcher, float>(pos, phic, grid, valid, tc);
  return s.to(dt);
}

template <class Launcher, class T>
std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd_typed(const at::Tensor& ds, const at::Tensor& pos,
                                                                   at::TensorList phi, const Grid& grid,
                                                                   const std::optional<at::Tensor>& valid,
                                                                   bool tensor_cores) {
  const at::Device dev = pos.device();
  const Prepared<T> p = prepare<Launcher, T>(phi, gt::kActGelu, gt::kActGelu, tensor_cores, dev);
  B::EncodingArgs<T> e = encoding_args<T>(pos, valid, grid, p);
  at::Tensor dpos = at::zeros_like(pos);
  at::Tensor partial = at::zeros({grid.programs, p.mlp.view.grad_size}, ds.options());
  e.ds = ds.data_ptr<T>();
  e.dpos = dpos.data_ptr<double>();
  e.grad_partial = partial.data_ptr<T>();
  Launcher::template run_encoding_bwd<T>(e, grid.programs, p.smem, dev);
  return {dpos, reduce_grad(p.mlp.view, partial, phi)};
}

template <class Launcher>
std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd_glue(const at::Tensor& ds, const at::Tensor& pos,
                                                                  at::TensorList phi, const at::Tensor& seg,
                                                                  const std::optional<at::Tensor>& valid,
                                                                  int64_t max_atoms, c10::string_view precision) {
  const bool tc = use_tensor_cores(phi.empty() ? at::kFloat : phi[0].scalar_type(), precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms, /*allow_half=*/true);
  check_host_segments<Launcher>(seg, pos.size(0), max_atoms);
  const auto dt = phi[0].scalar_type();
  check_encoding_upstream(ds, pos, dt);
  const Grid grid = make_grid(seg, pos.size(0), max_atoms);
  const auto ct = compute_dtype(dt);
  const std::vector<at::Tensor> phic = cast_all(phi, ct);
  const at::Tensor dsc = ds.to(ct).contiguous();
  at::Tensor dpos;
  std::vector<at::Tensor> dphi;
  if (ct == at::kDouble) {
    std::tie(dpos, dphi) = encoding_bwd_typed<Launcher, double>(dsc, pos, phic, grid, valid, false);
  } else {
    std::tie(dpos, dphi) = encoding_bwd_typed<Launcher, float>(dsc, pos, phic, grid, valid, tc);
  }
  for (size_t i = 0; i < dphi.size(); ++i) dphi[i] = dphi[i].to(phi[i].scalar_type());
  return {dpos, dphi};
}

}  // namespace glue
}  // namespace gtk
