// cuda_emulation.cpp — runs the CUDA kernels' program bodies (cuda/block_kernels.h) on the host, one program
// at a time and its threads one after another between barriers, with the same torch glue (fused_glue.h) as the
// GPU build. Registered as the ops gtkernels_C::cuda_emulated_* on CPU tensors: `backend="cuda"` uses them for
// CPU tensors when GTKERNELS_CUDA_EMULATE=1 (as Triton's interpreter), so the test suite executes the CUDA
// kernels' indexing, tiling, masking and reductions on a machine without a GPU.
//
// GTKERNELS_CUDA_EMULATE_ORDER=reverse runs each phase's threads last to first. The kernels' rule is that no
// thread reads, within a phase, what another thread writes in that phase; then both orders give bit-identical
// results, which the tests check. The tensor-core matmul (b.mma_tf32) rounds its operands to TF32 as the GPU
// does. (What the emulation cannot see: warp scheduling, memory ordering, shared
// memory bank conflicts, register spills; those need the GPU and compute-sanitizer.)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
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
  bool round_tf32 = true;
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

  // The tensor-core matmul as the GPU computes it: operands rounded to TF32 (10-bit mantissa, round to nearest,
  // ties away from zero, as cvt.rna.tf32.f32), products accumulated in float.
  static float tf32(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // finite values only
    std::memcpy(&v, &u, sizeof v);
    return v;
  }
  void mma_tf32(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int N, int K) const {
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < N; ++j) {
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) {
          acc += round_tf32 ? tf32(A[i * lda + k]) * tf32(B[k * ldb + j]) : A[i * lda + k] * B[k * ldb + j];
        }
        C[i * ldc + j] = acc;
      }
    }
  }
};

bool reverse_order() {
  const char* e = std::getenv("GTKERNELS_CUDA_EMULATE_ORDER");
  return e != nullptr && std::strcmp(e, "reverse") == 0;
}

// GTKERNELS_CUDA_EMULATE_TF32_ROUNDING=0: the tensor-core matmul keeps full float operands, so the tests can
// check the tensor-core path's tiling and padding against the exact path to float rounding.
bool round_tf32() {
  const char* e = std::getenv("GTKERNELS_CUDA_EMULATE_TF32_ROUNDING");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// Programs are independent (each writes its own rows and partial-gradient row), so they may run in parallel.
template <class Program>
void run_programs(int64_t n_tiles, size_t smem, Program program) {
  const bool rev = reverse_order(), tf32 = round_tf32();
  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buffer((smem + sizeof(double) - 1) / sizeof(double) + 1);
    HostBlock b;
    b.reverse = rev;
    b.round_tf32 = tf32;
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
