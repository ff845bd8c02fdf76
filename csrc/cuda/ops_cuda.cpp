// ops_cuda.cpp — the CUDA implementations of the gtkernels_C ops (schemas in ../ops.cpp). Checks, the program
// grid, packing and gradient reduction are in glue.h (shared with the host emulation the CPU tests run); this
// file only launches on the current stream of the inputs' device. No host synchronisation: nothing is copied
// between host and device (tests/test_no_host_sync.py).
// Built into gtkernels._C only by the CUDA build (setup.py: *_cuda.cpp); compile-checked without a GPU by
// .ci/cuda_check.sh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "glue.h"
#include "kernels/launch.h"

namespace gtk {
namespace {

namespace B = gt::blk;

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "gtkernels: CUDA launch of ", what, " failed: ", B::error_string(code));
}

struct CudaLauncher {
  static size_t smem_limit(const at::Device& dev) {
    return static_cast<size_t>(B::max_dynamic_smem(dev.index()));
  }
  // Nothing to skip: seg is on the GPU, where its values are never checked in C++ (the kernels clamp it and
  // poison molecules larger than max_atoms, block_programs.h tile_of).
  static bool skip_segment_checks() { return false; }
  static void* stream(const at::Device& dev) { return c10::cuda::getCurrentCUDAStream(dev.index()).stream(); }

  template <class T>
  static void run_attention_fwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_attention_fwd<T>(a, n, smem, stream(dev)), "attention_fwd");
  }
  template <class T>
  static void run_attention_bwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_attention_bwd<T>(a, n, smem, stream(dev)), "attention_bwd");
  }
  template <class T>
  static void run_encoding_fwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_encoding_fwd<T>(e, n, smem, stream(dev)), "encoding_fwd");
  }
  template <class T>
  static void run_encoding_bwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_encoding_bwd<T>(e, n, smem, stream(dev)), "encoding_bwd");
  }
};

// The torch entries of the CUDA backend.
constexpr auto attention_fwd_cuda = &glue::attention_fwd_glue<CudaLauncher>;
constexpr auto attention_bwd_cuda = &glue::attention_bwd_glue<CudaLauncher>;
constexpr auto encoding_fwd_cuda = &glue::encoding_fwd_glue<CudaLauncher>;
constexpr auto encoding_bwd_cuda = &glue::encoding_bwd_glue<CudaLauncher>;

}  // namespace
}  // namespace gtk

TORCH_LIBRARY_IMPL(gtkernels_C, CUDA, m) {
  m.impl("attention_fwd", gtk::attention_fwd_cuda);
  m.impl("attention_bwd", gtk::attention_bwd_cuda);
  m.impl("encoding_fwd", gtk::encoding_fwd_cuda);
  m.impl("encoding_bwd", gtk::encoding_bwd_cuda);
}
