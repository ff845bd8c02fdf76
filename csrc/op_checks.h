// op_checks.h — input checks of the gtkernels_C ops, shared by the CPU kernels (cpu/ops_cpu.cpp), the CUDA kernels
// (cuda/ops_cuda.cpp) and their host emulation (cuda/emulation.cpp; both through cuda/glue.h). Every tensor must
// be on the kernel's device `dev` (the device of q, or of pos for the encoding). The checks of shapes, dtypes
// and devices read host metadata only. seg's values are checked only where seg is on the host
// (check_segment_values: the CPU backend and the host emulation); a GPU seg is never copied back (that would
// block every call), the Python layer validates cu_seqlens / max_seqlen once per forward, and the CUDA kernels
// clamp seg and poison molecules larger than max_atoms (cuda/block_programs.h, tile_of).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "contract.h"

namespace gtk {

inline void check_rows_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Device& dev) {
  TORCH_CHECK(t.dim() == dim, "gtkernels: ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "gtkernels: ", name, " must be contiguous");
  TORCH_CHECK(t.device() == dev, "gtkernels: ", name, " must be on ", dev, " like the other inputs, got ",
              t.device());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "gtkernels: ", name, " has dtype ", t.scalar_type(), " but expected ",
              dtype, " (all floating inputs must share one dtype)");
}

// seg: int64 [B + 1], contiguous, on dev; valid: bool [R], contiguous, on dev when given. Metadata only: no
// value is read (seg may live on a GPU).
inline void check_segments(const at::Tensor& seg, const std::optional<at::Tensor>& valid, int64_t R,
                           const at::Device& dev) {
  TORCH_CHECK(seg.scalar_type() == at::kLong, "gtkernels: seg must be int64, got ", seg.scalar_type());
  TORCH_CHECK(seg.dim() == 1 && seg.numel() >= 1, "gtkernels: seg must be 1-D of length B + 1 >= 1, got shape ",
              seg.sizes());
  TORCH_CHECK(seg.is_contiguous() && seg.device() == dev, "gtkernels: seg must be a contiguous tensor on ", dev,
              ", got one on ", seg.device());
  if (valid.has_value()) {
    const at::Tensor& m = *valid;
    TORCH_CHECK(m.scalar_type() == at::kBool, "gtkernels: valid must be a bool tensor, got ", m.scalar_type());
    TORCH_CHECK(m.dim() == 1 && m.size(0) == R, "gtkernels: valid must have shape [", R, "], got ", m.sizes());
    TORCH_CHECK(m.is_contiguous() && m.device() == dev, "gtkernels: valid must be a contiguous tensor on ", dev);
  }
}

// max_atoms: a host int >= 0 (FlashAttention's max_seqlen).
inline void check_max_atoms(int64_t max_atoms) {
  TORCH_CHECK(max_atoms >= 0, "gtkernels: max_atoms must be >= 0, got ", max_atoms);
}

// seg's values, for a seg on the host (CPU tensor): seg[0] = 0, seg[B] = R, non-decreasing, and every molecule
// has at most max_atoms rows.
inline void check_segment_values(const at::Tensor& seg, int64_t R, int64_t max_atoms) {
  TORCH_CHECK(seg.is_cpu(), "gtkernels: internal: seg's values are checked on CPU tensors only, got one on ",
              seg.device());
  const int64_t* s = seg.data_ptr<int64_t>();
  const int64_t B = seg.numel() - 1;
  TORCH_CHECK(s[0] == 0, "gtkernels: seg[0] must be 0, got ", s[0]);
  TORCH_CHECK(s[B] == R, "gtkernels: seg[-1] must equal the number of rows ", R, ", got ", s[B]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(s[b] <= s[b + 1], "gtkernels: seg must be non-decreasing, got seg[", b, "] = ", s[b], " > seg[",
                b + 1, "] = ", s[b + 1]);
    TORCH_CHECK(s[b + 1] - s[b] <= max_atoms, "gtkernels: molecule ", b, " has ", s[b + 1] - s[b],
                " rows, more than max_atoms = ", max_atoms);
  }
}

// precision: "ieee" (exact float32 matmuls, the default) or "tf32" (TF32 tensor cores, opt-in).
inline bool check_precision(c10::string_view precision) {
  TORCH_CHECK(precision == "ieee" || precision == "tf32", "gtkernels: precision must be \"ieee\" or \"tf32\", got \"",
              std::string(precision), "\"");
  return precision == "tf32";
}

// MLP parameters [W0, b0, ..., Wn, bn]: 1..kMaxLayers Linear layers, W [out, in], b [out], layer 0 in = 1,
// last out = 1, consecutive widths matching, every width <= kMaxWidth, dtype as the inputs, on dev.
inline void check_mlp(at::TensorList params, const char* name, at::ScalarType dtype, const at::Device& dev) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(n >= 2 && n % 2 == 0, "gtkernels: ", name,
              " must be a list [W0, b0, ..., Wn, bn] of an even, non-zero number of tensors, got ", n);
  const int64_t L = n / 2;
  TORCH_CHECK(L <= gt::kMaxLayers, "gtkernels: ", name, " has ", L, " Linear layers; at most ", gt::kMaxLayers,
              " are supported");
  int64_t prev_out = 1;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& W = params[2 * l];
    const at::Tensor& b = params[2 * l + 1];
    TORCH_CHECK(W.dim() == 2, "gtkernels: ", name, " weight ", l, " must be 2-D [out, in], got shape ", W.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == W.size(0), "gtkernels: ", name, " bias ", l, " must have shape [",
                W.size(0), "], got ", b.sizes());
    TORCH_CHECK(W.size(1) == prev_out, "gtkernels: ", name, " weight ", l, " has in = ", W.size(1),
                " but the previous layer's out (or the scalar input) is ", prev_out);
    TORCH_CHECK(W.size(0) >= 1 && W.size(0) <= gt::kMaxWidth, "gtkernels: ", name, " weight ", l, " has width ",
                W.size(0), "; widths must be in 1..", gt::kMaxWidth);
    check_dtype(W, name, dtype);
    check_dtype(b, name, dtype);
    TORCH_CHECK(W.device() == dev && b.device() == dev, "gtkernels: ", name, " must be on ", dev, ", got ",
                W.device());
    prev_out = W.size(0);
  }
  TORCH_CHECK(prev_out == 1, "gtkernels: the last layer of ", name, " must have out = 1, got ", prev_out);
}

// float32/float64 always; float16/bfloat16 where the kernels accumulate in float32 (allow_half).
inline void check_floating(const at::Tensor& t, const char* name, bool allow_half = false) {
  const auto d = t.scalar_type();
  const bool ok = d == at::kFloat || d == at::kDouble || (allow_half && (d == at::kHalf || d == at::kBFloat16));
  TORCH_CHECK(ok, "gtkernels: ", name, allow_half ? " must be float32, float64, float16 or bfloat16, got "
                                                  : " must be float32 or float64, got ", d);
}

// q, k, v [R, H, D] (one floating dtype, H, D >= 1) and pos [R, 3] float64, on q's device: the rows inputs of
// both attention ops.
inline void check_qkv_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                           bool allow_half) {
  check_floating(q, "q", allow_half);
  const at::Device dev = q.device();
  check_rows_tensor(q, "q", 3, dev);
  check_rows_tensor(k, "k", 3, dev);
  check_rows_tensor(v, "v", 3, dev);
  check_rows_tensor(pos, "pos", 2, dev);
  check_dtype(k, "k", q.scalar_type());
  check_dtype(v, "v", q.scalar_type());
  check_dtype(pos, "pos", at::kDouble);
  TORCH_CHECK(q.size(1) >= 1 && q.size(2) >= 1, "gtkernels: q must be [R, H, D] with H >= 1 and D >= 1, got ",
              q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "gtkernels: q, k, v must have the same shape [R, H, D], got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(pos.size(0) == q.size(0) && pos.size(1) == 3, "gtkernels: pos must have shape [", q.size(0),
              ", 3], got ", pos.sizes());
}

// Checks the attention inputs' shapes, dtypes and devices, and max_atoms (not seg's values).
inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& pos, at::TensorList psi, const at::Tensor& seg,
                                   const std::optional<at::Tensor>& valid, int64_t max_atoms,
                                   bool allow_half = false) {
  check_qkv_rows(q, k, v, pos, allow_half);
  check_mlp(psi, "psi", q.scalar_type(), q.device());
  check_segments(seg, valid, q.size(0), q.device());
  check_max_atoms(max_atoms);
}

// The backward's extra inputs: dout and out shaped like q (q's dtype), lse [R, H] of dtype lse_dtype.
inline void check_attention_saved(const at::Tensor& q, const at::Tensor& dout, const at::Tensor& out,
                                  const at::Tensor& lse, at::ScalarType lse_dtype) {
  const at::Device dev = q.device();
  check_rows_tensor(dout, "dout", 3, dev);
  check_rows_tensor(out, "out", 3, dev);
  check_rows_tensor(lse, "lse", 2, dev);
  check_dtype(dout, "dout", q.scalar_type());
  check_dtype(out, "out", q.scalar_type());
  check_dtype(lse, "lse", lse_dtype);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "gtkernels: dout and out must have the shape of q ", q.sizes(), ", got ", dout.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(lse.size(0) == q.size(0) && lse.size(1) == q.size(1), "gtkernels: lse must have shape [", q.size(0),
              ", ", q.size(1), "], got ", lse.sizes());
}

// Checks the encoding inputs' shapes, dtypes and devices, and max_atoms (not seg's values).
inline void check_encoding_inputs(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                                  const std::optional<at::Tensor>& valid, int64_t max_atoms,
                                  bool allow_half = false) {
  const at::Device dev = pos.device();
  check_rows_tensor(pos, "pos", 2, dev);
  check_dtype(pos, "pos", at::kDouble);
  TORCH_CHECK(pos.size(1) == 3, "gtkernels: pos must have shape [R, 3], got ", pos.sizes());
  TORCH_CHECK(!phi.empty(), "gtkernels: phi must not be empty");
  check_floating(phi[0], "phi[0]", allow_half);
  check_mlp(phi, "phi", phi[0].scalar_type(), dev);
  check_segments(seg, valid, pos.size(0), dev);
  check_max_atoms(max_atoms);
}

inline void check_encoding_upstream(const at::Tensor& ds, const at::Tensor& pos, at::ScalarType dtype) {
  check_rows_tensor(ds, "ds", 1, pos.device());
  check_dtype(ds, "ds", dtype);
  TORCH_CHECK(ds.size(0) == pos.size(0), "gtkernels: ds must have shape [", pos.size(0), "], got ", ds.sizes());
}

// φ of R-MAT: [W1 [Dh, C], c1 [Dh], W2 [width, Dh], c2 [width]], C > 14 (graph channels + at least one basis
// function), dtype as the inputs, on dev. Returns Dh.
inline int64_t check_relation_mlp(at::TensorList p, const char* name, int64_t width, at::ScalarType dtype,
                                  const at::Device& dev) {
  TORCH_CHECK(p.size() == 4, "gtkernels: ", name, " must be [W1, c1, W2, c2], got ", p.size(), " tensors");
  const int64_t graph = gt::kBondChannels + gt::kHopChannels;
  TORCH_CHECK(p[0].dim() == 2 && p[0].size(0) >= 1 && p[0].size(1) > graph, "gtkernels: ", name,
              "[0] must be [Dh, C] with Dh >= 1 and C > ", graph, ", got ", p[0].sizes());
  const int64_t Dh = p[0].size(0);
  TORCH_CHECK(p[1].dim() == 1 && p[1].size(0) == Dh, "gtkernels: ", name, "[1] must be [", Dh, "], got ",
              p[1].sizes());
  TORCH_CHECK(p[2].dim() == 2 && p[2].size(0) == width && p[2].size(1) == Dh, "gtkernels: ", name, "[2] must be [",
              width, ", ", Dh, "], got ", p[2].sizes());
  TORCH_CHECK(p[3].dim() == 1 && p[3].size(0) == width, "gtkernels: ", name, "[3] must be [", width, "], got ",
              p[3].sizes());
  for (const at::Tensor& t : p) {
    check_dtype(t, name, dtype);
    TORCH_CHECK(t.is_contiguous() && t.device() == dev, "gtkernels: ", name, " must be contiguous tensors on ",
                dev);
  }
  return Dh;
}

// The relative attention's inputs: shapes, dtypes and devices, and max_atoms (not seg's or code's values).
inline void check_relative_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& pos, const at::Tensor& code, at::TensorList phi_k,
                                  at::TensorList phi_v, const std::optional<at::Tensor>& v_rel, const at::Tensor& seg,
                                  const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& dummy,
                                  int64_t max_atoms) {
  check_qkv_rows(q, k, v, pos, false);
  const at::Device dev = q.device();
  const auto dtype = q.scalar_type();
  check_rows_tensor(code, "code", 1, dev);
  TORCH_CHECK(code.scalar_type() == at::kShort, "gtkernels: code must be int16, got ", code.scalar_type());
  const int64_t width = q.size(1) * q.size(2);
  const int64_t dh = check_relation_mlp(phi_k, "phi_k", width, dtype, dev);
  TORCH_CHECK(check_relation_mlp(phi_v, "phi_v", width, dtype, dev) == dh && phi_v[0].size(1) == phi_k[0].size(1),
              "gtkernels: phi_k and phi_v must have one W1 shape, got ", phi_k[0].sizes(), " and ",
              phi_v[0].sizes());
  if (v_rel.has_value()) {
    check_rows_tensor(*v_rel, "v_rel", 2, dev);
    check_dtype(*v_rel, "v_rel", dtype);
    TORCH_CHECK(v_rel->size(0) == q.size(1) && v_rel->size(1) == q.size(2), "gtkernels: v_rel must have shape [",
                q.size(1), ", ", q.size(2), "], got ", v_rel->sizes());
  }
  check_segments(seg, valid, q.size(0), dev);
  if (dummy.has_value()) {
    check_rows_tensor(*dummy, "dummy", 1, dev);
    TORCH_CHECK(dummy->scalar_type() == at::kBool && dummy->size(0) == q.size(0),
                "gtkernels: dummy must be a bool tensor of shape [", q.size(0), "], got ", dummy->scalar_type(), " ",
                dummy->sizes());
  }
  check_max_atoms(max_atoms);
}

}  // namespace gtk
