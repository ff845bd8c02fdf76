// mlp_pack.h — torch glue shared by the CPU and CUDA kernels: packs the MLP parameters [W0, b0, ..., Wn, bn]
// into one buffer described by gt::MlpView (layout in pair_math.h), and turns the flat gradient back into
// tensors shaped like the parameters.
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
  pk.buffer = at::zeros({std::max<int64_t>(total, 1)},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value).device(at::kCPU));
  T* base = pk.buffer.template data_ptr<T>();
  for (int l = 0; l < L; ++l) {
    const at::Tensor W = params[2 * l].contiguous();
    const at::Tensor bias = params[2 * l + 1].contiguous();
    const T* Wp = W.data_ptr<T>();
    const T* bp = bias.data_ptr<T>();
    T* wt = base + off_wt[l];
    T* w = base + off_w[l];
    T* b = base + off_b[l];
    for (int o = 0; o < m.out[l]; ++o) {
      for (int i = 0; i < m.in[l]; ++i) {
        const T val = Wp[static_cast<int64_t>(o) * m.in[l] + i];
        wt[static_cast<int64_t>(i) * m.ld[l] + o] = val;
        w[static_cast<int64_t>(o) * m.ldin[l] + i] = val;
      }
      b[o] = bp[o];
    }
    m.wt[l] = wt;
    m.w[l] = w;
    m.b[l] = b;
  }
  return pk;
}

// Flat gradient buffer → list of tensors shaped like params ([out, in] weights, [out] biases).
template <class T>
std::vector<at::Tensor> unpack_mlp_grad(const gt::MlpView<T>& m, const T* g, at::TensorList params) {
  std::vector<at::Tensor> out;
  out.reserve(params.size());
  for (int l = 0; l < m.n_layers; ++l) {
    at::Tensor dW = at::empty({m.out[l], m.in[l]}, params[2 * l].options());
    at::Tensor db = at::empty({m.out[l]}, params[2 * l + 1].options());
    T* dWp = dW.data_ptr<T>();
    T* dbp = db.data_ptr<T>();
    const T* gw = g + m.gwt[l];
    const T* gb = g + m.gb[l];
    for (int o = 0; o < m.out[l]; ++o) {
      for (int i = 0; i < m.in[l]; ++i) {
        dWp[static_cast<int64_t>(o) * m.in[l] + i] = gw[static_cast<int64_t>(i) * m.ld[l] + o];
      }
      dbp[o] = gb[o];
    }
    out.push_back(dW);
    out.push_back(db);
  }
  return out;
}

// The same on a flat gradient tensor on any device, with tensor ops (no host copy): dW = dWᵀ[:in, :out]ᵀ.
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

// A packed MLP moved to `device`: the view's pointers rebased onto the device copy of the buffer.
template <class T>
PackedMlp<T> to_device(const PackedMlp<T>& host, const at::Device& device) {
  if (device.is_cpu()) return host;
  PackedMlp<T> d;
  d.buffer = host.buffer.to(device);
  d.view = host.view;
  const T* h0 = host.buffer.template data_ptr<T>();
  T* d0 = d.buffer.template data_ptr<T>();
  for (int l = 0; l < host.view.n_layers; ++l) {
    d.view.wt[l] = d0 + (host.view.wt[l] - h0);
    d.view.w[l] = d0 + (host.view.w[l] - h0);
    d.view.b[l] = d0 + (host.view.b[l] - h0);
  }
  return d;
}

}  // namespace gtk
