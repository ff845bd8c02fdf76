// launch.h — host entry points of the CUDA kernels (attention.cu, encoding.cu). No torch and no CUDA headers:
// the stream is passed as void* (a cudaStream_t), errors come back as the cudaError_t value (0 = success).
// Called by the CUDA launcher of the torch glue (../ops_cuda.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../block_programs.h"

namespace gt {
namespace blk {

// Launches one program of kThreads threads per tile, `smem` bytes of dynamic shared memory each.
template <class T>
int launch_attention_fwd(const AttentionArgs<T>& args, int64_t n_tiles, size_t smem, void* stream);
template <class T>
int launch_attention_bwd(const AttentionArgs<T>& args, int64_t n_tiles, size_t smem, void* stream);
template <class T>
int launch_encoding_fwd(const EncodingArgs<T>& args, int64_t n_tiles, size_t smem, void* stream);
template <class T>
int launch_encoding_bwd(const EncodingArgs<T>& args, int64_t n_tiles, size_t smem, void* stream);

// Largest dynamic shared memory one block may opt into on `device` (cudaDevAttrMaxSharedMemoryPerBlockOptin).
int max_dynamic_smem(int device);

// cudaGetErrorString of an error code returned above.
const char* error_string(int code);

}  // namespace blk
}  // namespace gt
