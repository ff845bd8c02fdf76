// cuda_emulation.cpp — runs the CUDA kernels' program bodies (cuda/block_kernels.h) on the host, one program
// at a time and its threads one after another between barriers, with the same torch glue (fused_glue.h) as the
// GPU build. Registered as the ops gtkernels_C::cuda_emulated_* on CPU tensors: `backend="cuda"` uses them for
// CPU tensors when GTKERNELS_CUDA_EMULATE=1 (as Triton's interpreter), so the test suite executes the CUDA
// kernels' indexing, tiling, masking and reductions on a machine without a GPU.
//
// GTKERNELS_CUDA_EMULATE_ORDER=reverse runs each phase's threads last to first. The kernels' rule is that no
// thread reads, within a phase, what another thread writes in that phase; then both orders give bit-identical
// results, which the tests check. (What the emulation cannot see: warp scheduling, memory ordering, shared
// memory bank conflicts, register spills; those need the GPU and compute-sanitizer.)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../fused_glue.h"

namespace gtk {
namespace {

namespace B = gt::blk;

struct HostBlock {
  int n = B::kThreads;
  bool reverse = false;
  int size() const { return n; }
  template <class F>
  void for_each_thread(F&& f) const {
    if (reverse) {
      for (int t = n - 1; t >= 0; --t) f(t);
    } else {
      for (int t = 0; t < n; ++t) f(t);
    }
  }
  void sync() const {}
};

bool reverse_order() {
  const char* e = std::getenv("GTKERNELS_CUDA_EMULATE_ORDER");
  return e != nullptr && std::strcmp(e, "reverse") == 0;
}

// Programs are independent (each writes its own rows and partial-gradient row), so they may run in parallel.
template <class Program>
void run_programs(int64_t n_tiles, size_t smem, Program program) {
  const bool rev = reverse_order();
  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buffer((smem + sizeof(double) - 1) / sizeof(double) + 1);
    HostBlock b;
    b.reverse = rev;
    for (int64_t tile = begin; tile < end; ++tile) {
      std::fill(buffer.begin(), buffer.end(), std::numeric_limits<double>::quiet_NaN());  // no stale reads
      program(b, tile, reinterpret_cast<char*>(buffer.data()));
    }
  });
}

struct HostLauncher {
  static size_t smem_limit(const at::Device&) { return 227 * 1024; }  // an H100's opt-in limit per block

  template <class T>
  static void attention_fwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device&) {
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::attention_fwd_program<T>(b, a, t, s); });
  }
  template <class T>
  static void attention_bwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device&) {
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::attention_bwd_program<T>(b, a, t, s); });
  }
  template <class T>
  static void encoding_fwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device&) {
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::encoding_fwd_program<T>(b, e, t, s); });
  }
  template <class T>
  static void encoding_bwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device&) {
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::encoding_bwd_program<T>(b, e, t, s); });
  }
};

}  // namespace
}  // namespace gtk

TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {
  m.impl("cuda_emulated_attention_fwd", &gtk::glue::attention_fwd<gtk::HostLauncher>);
  m.impl("cuda_emulated_attention_bwd", &gtk::glue::attention_bwd<gtk::HostLauncher>);
  m.impl("cuda_emulated_encoding_fwd", &gtk::glue::encoding_fwd<gtk::HostLauncher>);
  m.impl("cuda_emulated_encoding_bwd", &gtk::glue::encoding_bwd<gtk::HostLauncher>);
}
