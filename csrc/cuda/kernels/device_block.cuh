// device_block.cuh — the block interface of ../block_programs.h on the GPU, and the launch helper shared by the
// kernel files. Every thread of the block runs the program body; for_each_thread hands it its own index;
// mma_tf32 is a block-wide tensor-core matmul (WMMA).
#pragma once

#include <cuda_runtime.h>
#include <mma.h>

#include "../block_programs.h"

namespace gt {
namespace blk {

struct DeviceBlock {
  __device__ int size() const { return static_cast<int>(blockDim.x); }
  template <class F>
  __device__ void for_each_thread(F&& f) const {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ void sync() const { __syncthreads(); }

  // C[M][N] = A[M][K]·B[K][N] on tensor cores: each warp takes 16×16 tiles of C in turn, K in steps of 8,
  // operands rounded to TF32 (__float_to_tf32, round to nearest), float accumulation.
  __device__ void mma_tf32(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int N,
                           int K) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
    const int tn = N / 16;
    for (int tile = warp; tile < (M / 16) * tn; tile += warps) {
      const int i0 = (tile / tn) * 16, j0 = (tile % tn) * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
      wmma::fill_fragment(c, 0.0f);
      for (int k0 = 0; k0 < K; k0 += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
        wmma::load_matrix_sync(a, A + i0 * lda + k0, lda);
        wmma::load_matrix_sync(b, B + k0 * ldb + j0, ldb);
        for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
        for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
        wmma::mma_sync(c, a, b, c);
      }
      wmma::store_matrix_sync(C + i0 * ldc + j0, c, ldc, wmma::mem_row_major);
    }
#else  // no TF32 tensor cores before sm_80: exact float matmul, one thread per element
    for (int e = static_cast<int>(threadIdx.x); e < M * N; e += static_cast<int>(blockDim.x)) {
      const int i = e / N, j = e - i * N;
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) acc += A[i * lda + k] * B[k * ldb + j];
      C[i * ldc + j] = acc;
    }
#endif
    __syncthreads();
  }
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
