// ops.cpp — the schemas of the gtkernels_C operator library (TORCH_LIBRARY), and nothing else. Each backend
// registers its entries at the end of its own file (TORCH_LIBRARY_IMPL): cpu/ops_cpu.cpp (CPU),
// cuda/ops_cuda.cpp (CUDA), cuda/emulation.cpp (the cuda_emulated_* ops on CPU).
// Layout "segments of rows" (covers padded and packed batches):
//   q, k, v, out, dout : contiguous [R, H, D], one floating dtype (float32/float64), as are the ψ / φ
//   parameters [W0, b0, ..., Wn, bn] (nn.Linear layout, first in = 1, last out = 1);
//   pos : [R, 3] always float64 (distances in float64: far-apart fragments keep their precision);
//   seg   : int64 [B + 1], seg[0] = 0, seg[B] = R, non-decreasing (molecule b owns rows seg[b]..seg[b+1]-1);
//   valid : optional bool [R] (None: every row is an atom; False: padding row);
//   max_atoms : an upper bound of seg[b+1] - seg[b], known on the host (FlashAttention's max_seqlen): the GPU
//               backends size their grids with it, so they need no host copy of seg. seg's values are checked
//               where seg is on the host (the CPU backend, and the host emulation of the CUDA kernels); on a GPU
//               they are not (the Python layer validates cu_seqlens / max_seqlen once per forward): the CUDA
//               kernels clamp seg into [0, R] and write NaN into every output of a molecule with more rows than
//               max_atoms;
//   precision : "ieee" or "tf32", the float32 matmuls of the GPU backends (the CPU kernels are always exact).
// R-MAT relative attention (docs/semantics.md §6.4-6.5), same rows layout, plus
//   code  : int16 [P], the graph code of every pair, molecule after molecule, each n_b × n_b block row-major
//           (P = Σ n_b², n_b = seg[b+1] - seg[b]; a padded batch is molecules of N slots, P = B·N²);
//   phi_k, phi_v : [W1 [Dh, C], c1 [Dh], W2 [H·D, Dh], c2 [H·D]] (nn.Linear layout, C = 14 + basis size);
//   v_rel : optional [H, D] (R-MAT's relative_v); dummy : optional bool [R] (True: a dummy node, basis 0);
//   lse   : [R, H] of the logits without their per-row constants (c2ᴷ's and u's terms, which softmax cancels).
#include <torch/library.h>

TORCH_LIBRARY(gtkernels_C, m) {
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, Tensor? valid, "
      "int max_atoms, float scale, str precision) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, "
      "Tensor? valid, int max_atoms, float scale, str precision, Tensor out, Tensor lse) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("encoding_fwd(Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, str precision) -> Tensor");
  m.def(
      "encoding_bwd(Tensor ds, Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, "
      "str precision) -> (Tensor, Tensor[])");
  m.def(
      "relative_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor code, Tensor[] phi_k, "
      "Tensor[] phi_v, Tensor? v_rel, Tensor seg, Tensor? valid, Tensor? dummy, int max_atoms) -> (Tensor, Tensor)");
  m.def(
      "relative_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor code, Tensor[] phi_k, "
      "Tensor[] phi_v, Tensor? v_rel, Tensor seg, Tensor? valid, Tensor? dummy, int max_atoms, Tensor out, "
      "Tensor lse) -> (Tensor, Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor)");
  // The CUDA block programs run on the host (cuda/emulation.cpp), same schemas: for tests.
  m.def(
      "cuda_emulated_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, "
      "Tensor? valid, int max_atoms, float scale, str precision) -> (Tensor, Tensor)");
  m.def(
      "cuda_emulated_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, "
      "Tensor seg, Tensor? valid, int max_atoms, float scale, str precision, Tensor out, Tensor lse) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def(
      "cuda_emulated_encoding_fwd(Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, "
      "str precision) -> Tensor");
  m.def(
      "cuda_emulated_encoding_bwd(Tensor ds, Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, "
      "int max_atoms, str precision) -> (Tensor, Tensor[])");
}
