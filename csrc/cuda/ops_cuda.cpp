// ops_cuda.cpp — torch glue of the CUDA kernels: the CUDA implementations of the gtkernels_C ops (schemas in
// ../ops.cpp). Checks, the program grid, packing and gradient reduction are in ../fused_glue.h (shared with the
// host emulation the CPU tests run); this file only launches on the current stream of the inputs' device. No
// host synchronisation: nothing is copied between host and device (tests/test_no_host_sync.py).
// Built into gtkernels._C only by the CUDA build (setup.py); compile-checked without a GPU by .ci/cuda_check.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../fused_glue.h"
#include "launch.h"

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
  // poison molecules larger than max_atoms, block_kernels.h tile_of).
  static bool skip_segment_checks() { return false; }
  static void* stream(const at::Device& dev) { return c10::cuda::getCurrentCUDAStream(dev.index()).stream(); }

  template <class T>
  static void attention_fwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_attention_fwd<T>(a, n, smem, stream(dev)), "attention_fwd");
  }
  template <class T>
  static void attention_bwd(const B::AttentionArgs<T>& a, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_attention_bwd<T>(a, n, smem, stream(dev)), "attention_bwd");
  }
  template <class T>
  static void encoding_fwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_encoding_fwd<T>(e, n, smem, stream(dev)), "encoding_fwd");
  }
  template <class T>
  static void encoding_bwd(const B::EncodingArgs<T>& e, int64_t n, size_t smem, const at::Device& dev) {
    const c10::cuda::CUDAGuard guard(dev);
    check_launch(B::launch_encoding_bwd<T>(e, n, smem, stream(dev)), "encoding_bwd");
  }
};

}  // namespace
}  // namespace gtk

TORCH_LIBRARY_IMPL(gtkernels_C, CUDA, m) {
  m.impl("attention_fwd", &gtk::glue::attention_fwd<gtk::CudaLauncher>);
  m.impl("attention_bwd", &gtk::glue::attention_bwd<gtk::CudaLauncher>);
  m.impl("encoding_fwd", &gtk::glue::encoding_fwd<gtk::CudaLauncher>);
  m.impl("encoding_bwd", &gtk::glue::encoding_bwd<gtk::CudaLauncher>);
}
