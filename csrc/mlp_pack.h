// mlp_pack.h — torch glue shared by the CPU and CUDA kernels: packs the MLP parameters [W0, b0, ..., Wn, bn]
// into one buffer on their own device, described by gt::MlpView (layout in pair_math.h), and turns the flat
// gradient back into tensors shaped like the parameters. Nothing here copies device data to the host
// (tests/test_no_host_sync.py checks the CUDA glue's sources for that).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pair_math.h"

namespace gtk {

// MLP packing (see pair_math.h for the layout).
template <class T>
struct PackedMlp {
  at::Tensor buffer;  // keeps the packed parameters alive
  gt::MlpView<T> view;
};

// Packs params [W0, b0, ..., Wn, bn] (dtype T, any one device) into one zero-padded buffer on their device.
// The layout (offsets, leading dimensions, the gradient layout) comes from the parameter shapes only, and the
// buffer is filled with tensor copies on that device: no parameter value ever goes through the host, so on a
// GPU this is a few small device kernels and no synchronisation.
template <class T>
PackedMlp<T> pack_mlp(at::TensorList params, int hidden_act, int out_act) {
  constexpr int C = gt::kPad<T>;
  const int L = static_cast<int>(params.size() / 2);
  PackedMlp<T> pk;
  gt::MlpView<T>& m = pk.view;
  m.n_layers = L;
  m.hidden_act = hidden_act;
  m.out_act = out_act;
  m.max_ld = C;
  int64_t off_w[gt::kMaxLayers], off_wt[gt::kMaxLayers], off_b[gt::kMaxLayers];
  int64_t total = 0, gtotal = 0;
  auto align = [](int64_t x) { return (x + C - 1) / C * C; };
  for (int l = 0; l < L; ++l) {
    const at::Tensor& W = params[2 * l];
    m.out[l] = static_cast<int>(W.size(0));
    m.in[l] = static_cast<int>(W.size(1));
    m.ld[l] = (l == L - 1) ? 1 : gt::round_up(m.out[l], C);
    m.ldin[l] = (l == 0) ? 1 : m.ld[l - 1];
    if (l < L - 1) m.max_ld = std::max(m.max_ld, m.ld[l]);
    off_wt[l] = total;
    total = align(total + static_cast<int64_t>(m.in[l]) * m.ld[l]);
    off_w[l] = total;
    total = align(total + static_cast<int64_t>(m.out[l]) * m.ldin[l]);
    off_b[l] = total;
    total = align(total + m.ld[l]);
    m.gwt[l] = gtotal;
    gtotal = align(gtotal + static_cast<int64_t>(m.ldin[l]) * m.ld[l]);
    m.gb[l] = gtotal;
    gtotal = align(gtotal + m.ld[l]);
  }
  m.grad_size = gtotal;
  TORCH_CHECK(L >= 1, "gtkernels: an MLP needs at least one Linear layer [W0, b0], got ", params.size(), " tensors");
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  pk.buffer = at::zeros({std::max<int64_t>(total, 1)}, params[0].options().dtype(dtype));  // on their device
  for (int l = 0; l < L; ++l) {
    const at::Tensor W = params[2 * l].detach();      // [out, in]
    const at::Tensor bias = params[2 * l + 1].detach();  // [out]
    const int64_t in = m.in[l], out = m.out[l];
    // wt[l] = Wᵀ [in][ld], w[l] = W [out][ldin], b[l] [ld]; the padding stays 0
    pk.buffer.narrow(0, off_wt[l], in * m.ld[l]).view({in, m.ld[l]}).narrow(1, 0, out).copy_(W.t());
    pk.buffer.narrow(0, off_w[l], out * m.ldin[l]).view({out, m.ldin[l]}).narrow(1, 0, in).copy_(W);
    pk.buffer.narrow(0, off_b[l], out).copy_(bias);
    m.wt[l] = pk.buffer.template data_ptr<T>() + off_wt[l];
    m.w[l] = pk.buffer.template data_ptr<T>() + off_w[l];
    m.b[l] = pk.buffer.template data_ptr<T>() + off_b[l];
  }
  return pk;
}

// Flat gradient tensor (on any device) → tensors shaped like the parameters ([out, in] weights, [out] biases),
// with tensor ops (no host copy): dW = dWᵀ[:in, :out]ᵀ.
template <class T>
std::vector<at::Tensor> unpack_mlp_grad_tensor(const gt::MlpView<T>& m, const at::Tensor& flat) {
  std::vector<at::Tensor> out;
  for (int l = 0; l < m.n_layers; ++l) {
    at::Tensor wt = flat.narrow(0, m.gwt[l], static_cast<int64_t>(m.ldin[l]) * m.ld[l]).view({m.ldin[l], m.ld[l]});
    out.push_back(wt.narrow(0, 0, m.in[l]).narrow(1, 0, m.out[l]).t().clone(at::MemoryFormat::Contiguous));
    out.push_back(flat.narrow(0, m.gb[l], m.out[l]).clone());  // own storage: outputs must not alias
  }
  return out;
}

}  // namespace gtk
