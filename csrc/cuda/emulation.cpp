// emulation.cpp — runs the CUDA block programs (block_programs.h) on the host, one program at a time and its
// threads one after another between barriers, with the same torch glue (glue.h) as the GPU build. Compiled
// into every build (no CUDA headers). Registered as the ops gtkernels_C::cuda_emulated_* on CPU tensors:
// `backend="cuda"` uses them for CPU tensors when GTKERNELS_CUDA_EMULATE=1 (as Triton's interpreter), so the
// test suite executes the CUDA kernels' indexing, tiling, masking and reductions on a machine without a GPU.
//
// GTKERNELS_CUDA_EMULATE_ORDER=reverse runs each phase's threads last to first. The kernels' rule is that no
// thread reads, within a phase, what another thread writes in that phase; then both orders give bit-identical
// results, which the tests check. The tensor-core matmul (b.mma_tf32) rounds its operands to TF32 as the GPU
// does. (What the emulation cannot see: warp scheduling, memory ordering, shared memory bank conflicts,
// register spills; those need the GPU and compute-sanitizer.)
//
// GTKERNELS_CUDA_EMULATE_UNCHECKED=1 (a test hook, read only here) runs the kernels as they run on a GPU, where
// seg's values are not checked: the glue skips check_segment_values, so a bad seg or an undersized max_atoms
// reaches the programs (which must clamp the one and poison the other with NaN). Every buffer a launch writes
// is then moved into a frame of sentinel bytes, which must be intact afterwards: an out-of-bounds write raises.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "glue.h"

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

bool unchecked() {
  const char* e = std::getenv("GTKERNELS_CUDA_EMULATE_UNCHECKED");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// The frames of the test hook: add() moves a buffer of n elements into the middle of kGuard sentinel elements on
// each side (the kernel argument now points there), finish() checks that no sentinel byte changed, copies the
// buffer back and restores the pointer. Does nothing when not enabled.
class Guards {
 public:
  static constexpr int64_t kGuard = 4096;
  static constexpr unsigned char kSentinel = 0xA5;
  explicit Guards(bool enabled) : enabled_(enabled) {}

  template <class V>
  void add(V*& p, int64_t n, const char* name) {
    if (!enabled_ || p == nullptr) return;
    auto frame = std::make_shared<std::vector<V>>(static_cast<size_t>(n + 2 * kGuard));
    std::memset(static_cast<void*>(frame->data()), kSentinel, frame->size() * sizeof(V));
    std::copy(p, p + n, frame->data() + kGuard);
    V* const orig = p;
    V** const slot = &p;
    p = frame->data() + kGuard;
    finish_.push_back([frame, orig, slot, n, name]() {
      const auto* bytes = reinterpret_cast<const unsigned char*>(frame->data());
      const size_t guard = kGuard * sizeof(V), tail = (kGuard + n) * sizeof(V);
      for (size_t i = 0; i < guard; ++i) {
        TORCH_CHECK(bytes[i] == kSentinel && bytes[tail + i] == kSentinel,
                    "gtkernels: CUDA emulation: out-of-bounds write into ", name, " (", n, " elements), at element ",
                    bytes[i] != kSentinel ? -kGuard + static_cast<int64_t>(i / sizeof(V))
                                          : n + static_cast<int64_t>(i / sizeof(V)));
      }
      std::copy(frame->data() + kGuard, frame->data() + kGuard + n, orig);
      *slot = orig;
    });
  }

  void finish() {
    for (auto& f : finish_) f();
    finish_.clear();
  }

 private:
  bool enabled_;
  std::vector<std::function<void()>> finish_;
};

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
  static bool skip_segment_checks() { return unchecked(); }

  // Each launch runs on a copy of its arguments whose output pointers the test hook may move into frames.
  template <class T>
  static void run_attention_fwd(const B::AttentionArgs<T>& args, int64_t n, size_t smem, const at::Device&) {
    B::AttentionArgs<T> a = args;
    const int64_t R = a.segs.n_rows, HD = static_cast<int64_t>(a.H) * a.D;
    Guards g(unchecked());
    g.add(a.out, R * HD, "out");
    g.add(a.lse, R * a.H, "lse");
    g.add(a.lsum, R * a.H, "lsum");
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::attention_fwd_program<T>(b, a, t, s); });
    g.finish();
  }
  template <class T>
  static void run_attention_bwd(const B::AttentionArgs<T>& args, int64_t n, size_t smem, const at::Device&) {
    B::AttentionArgs<T> a = args;
    const int64_t R = a.segs.n_rows, HD = static_cast<int64_t>(a.H) * a.D;
    Guards g(unchecked());
    g.add(a.dq, R * HD, "dq");
    g.add(a.dk, R * HD, "dk");
    g.add(a.dv, R * HD, "dv");
    g.add(a.dpos, R * 3, "dpos");
    g.add(a.grad_partial, n * a.psi.grad_size, "grad_partial");
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::attention_bwd_program<T>(b, a, t, s); });
    g.finish();
  }
  template <class T>
  static void run_encoding_fwd(const B::EncodingArgs<T>& args, int64_t n, size_t smem, const at::Device&) {
    B::EncodingArgs<T> e = args;
    Guards g(unchecked());
    g.add(e.s, e.segs.n_rows, "s");
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::encoding_fwd_program<T>(b, e, t, s); });
    g.finish();
  }
  template <class T>
  static void run_encoding_bwd(const B::EncodingArgs<T>& args, int64_t n, size_t smem, const at::Device&) {
    B::EncodingArgs<T> e = args;
    Guards g(unchecked());
    g.add(e.dpos, e.segs.n_rows * 3, "dpos");
    g.add(e.grad_partial, n * e.phi.grad_size, "grad_partial");
    run_programs(n, smem, [&](HostBlock& b, int64_t t, char* s) { B::encoding_bwd_program<T>(b, e, t, s); });
    g.finish();
  }
};

// The torch entries of the emulated backend (schemas cuda_emulated_* in ../ops.cpp).
constexpr auto attention_fwd_emulated = &glue::attention_fwd_glue<HostLauncher>;
constexpr auto attention_bwd_emulated = &glue::attention_bwd_glue<HostLauncher>;
constexpr auto encoding_fwd_emulated = &glue::encoding_fwd_glue<HostLauncher>;
constexpr auto encoding_bwd_emulated = &glue::encoding_bwd_glue<HostLauncher>;

}  // namespace
}  // namespace gtk

TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {
  m.impl("cuda_emulated_attention_fwd", gtk::attention_fwd_emulated);
  m.impl("cuda_emulated_attention_bwd", gtk::attention_bwd_emulated);
  m.impl("cuda_emulated_encoding_fwd", gtk::encoding_fwd_emulated);
  m.impl("cuda_emulated_encoding_bwd", gtk::encoding_bwd_emulated);
}
