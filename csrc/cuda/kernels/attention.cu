// attention.cu — CUDA kernels of the fused geometric attention, forward and backward. The program bodies
// (distances, ψω on pair tiles in shared memory, gated online softmax, backward by recomputation) live in
// ../block_programs.h, shared with the host emulation that the CPU test suite runs.
#include "device_block.cuh"
#include "launch.h"

namespace gt {
namespace blk {

template <class T>
__global__ void __launch_bounds__(kThreads, kMinPrograms) attention_fwd_kernel(const AttentionArgs<T> args) {
  extern __shared__ __align__(128) char smem[];
  DeviceBlock b;
  attention_fwd_program<T>(b, args, static_cast<int64_t>(blockIdx.x), smem);
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinPrograms) attention_bwd_kernel(const AttentionArgs<T> args) {
  extern __shared__ __align__(128) char smem[];
  DeviceBlock b;
  attention_bwd_program<T>(b, args, static_cast<int64_t>(blockIdx.x), smem);
}

template <class T>
int launch_attention_fwd(const AttentionArgs<T>& args, int64_t n_tiles, size_t smem, void* stream) {
  return launch(attention_fwd_kernel<T>, args, n_tiles, smem, stream);
}

template <class T>
int launch_attention_bwd(const AttentionArgs<T>& args, int64_t n_tiles, size_t smem, void* stream) {
  return launch(attention_bwd_kernel<T>, args, n_tiles, smem, stream);
}

template int launch_attention_fwd<float>(const AttentionArgs<float>&, int64_t, size_t, void*);
template int launch_attention_fwd<double>(const AttentionArgs<double>&, int64_t, size_t, void*);
template int launch_attention_bwd<float>(const AttentionArgs<float>&, int64_t, size_t, void*);
template int launch_attention_bwd<double>(const AttentionArgs<double>&, int64_t, size_t, void*);

int max_dynamic_smem(int device) {
  int bytes = 48 * 1024;
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace blk
}  // namespace gt
