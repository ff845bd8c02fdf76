// device_block.cuh — the block interface of block_kernels.h on the GPU, and the launch helper shared by the
// kernel files. Every thread of the block runs the program body; for_each_thread hands it its own index.
#pragma once

#include <cuda_runtime.h>

#include "block_kernels.h"

namespace gt {
namespace blk {

struct DeviceBlock {
  __device__ int size() const { return static_cast<int>(blockDim.x); }
  template <class F>
  __device__ void for_each_thread(F&& f) const {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ void sync() const { __syncthreads(); }
};

// Launches kernel<<<n_tiles, kThreads, smem, stream>>>(args), opting into more than 48 KiB of dynamic shared
// memory when asked. Returns the cudaError_t as int.
template <class Args>
int launch(void (*kernel)(const Args), const Args& args, int64_t n_tiles, size_t smem, void* stream) {
  if (n_tiles == 0) return 0;
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  kernel<<<static_cast<unsigned int>(n_tiles), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(args);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace blk
}  // namespace gt
