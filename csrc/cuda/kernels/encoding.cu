// encoding.cu — CUDA kernels of the fused geometric positional encoding s_i = Σ_j φ(rinv_ij), forward and
// backward. Program bodies in ../block_programs.h (shared with the host emulation).
#include "device_block.cuh"
#include "launch.h"

namespace gt {
namespace blk {

template <class T>
__global__ void __launch_bounds__(kThreads, kMinPrograms) encoding_fwd_kernel(const EncodingArgs<T> args) {
  extern __shared__ __align__(128) char smem[];
  DeviceBlock b;
  encoding_fwd_program<T>(b, args, static_cast<int64_t>(blockIdx.x), smem);
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinPrograms) encoding_bwd_kernel(const EncodingArgs<T> args) {
  extern __shared__ __align__(128) char smem[];
  DeviceBlock b;
  encoding_bwd_program<T>(b, args, static_cast<int64_t>(blockIdx.x), smem);
}

template <class T>
int launch_encoding_fwd(const EncodingArgs<T>& args, int64_t n_tiles, size_t smem, void* stream) {
  return launch(encoding_fwd_kernel<T>, args, n_tiles, smem, stream);
}

template <class T>
int launch_encoding_bwd(const EncodingArgs<T>& args, int64_t n_tiles, size_t smem, void* stream) {
  return launch(encoding_bwd_kernel<T>, args, n_tiles, smem, stream);
}

template int launch_encoding_fwd<float>(const EncodingArgs<float>&, int64_t, size_t, void*);
template int launch_encoding_fwd<double>(const EncodingArgs<double>&, int64_t, size_t, void*);
template int launch_encoding_bwd<float>(const EncodingArgs<float>&, int64_t, size_t, void*);
template int launch_encoding_bwd<double>(const EncodingArgs<double>&, int64_t, size_t, void*);

}  // namespace blk
}  // namespace gt
