// The interface between the torch glue (ukd_cuda.cu) and the CUDA kernels (ukd_cuda_kernels.cu).
//
// Plain structs and launchers with no torch types, so the kernel translation unit compiles without the torch
// headers. Every launcher enqueues on `stream` and returns the launch status (cudaGetLastError).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ukd_math.h"

namespace ukd {
namespace cuda {

enum class DType : int8_t { kFloat32, kFloat64, kFloat16, kBFloat16 };

// One stage of one network: a (B, C, H, W) map in NCHW or channels_last memory, or a (B, C) matrix (hw = 1).
struct StageDesc {
  const void* feat;
  DType dtype;
  bool channels_last;  // as ukd_cpu.cpp's view_of decides it
  int64_t channels, hw;
  void* pooled;        // the (B, ΣC) pooled output in the compute dtype
  int64_t pooled_stride, column;
};

// Pools every stage (both networks at once); `acc_double` selects the float64 compute dtype.
cudaError_t launch_pool(const StageDesc* stages, int count, int64_t batch, bool acc_double, cudaStream_t stream);

// The row pass: [μ; r] rows of both heads and both logits in, the (B, 4) per-row terms and (when gy_s is
// non-null) the gradients out. Mirrors ukd_cpu.cpp's row_pass.
template <typename T>
struct RowArgs {
  const T *y_s, *y_t, *l_s, *l_t, *eps_s, *eps_t;  // eps: null when there is no noise
  T *rows, *gy_s, *gy_t, *gl_s, *gl_t;             // the four grads are all null or all set
  int64_t batch, k;
  RowScales<T> scales;
};
cudaError_t launch_rows(const RowArgs<float>& args, cudaStream_t stream);
cudaError_t launch_rows(const RowArgs<double>& args, cudaStream_t stream);

// components[v] = mean over the B rows of rows[:, v] in a fixed order; loss = weighted_loss(weights, components).
template <typename T>
struct ReduceArgs {
  const T* rows;
  int64_t batch;
  TermWeights<T> weights;
  T *components, *loss;
};
cudaError_t launch_reduce(const ReduceArgs<float>& args, cudaStream_t stream);
cudaError_t launch_reduce(const ReduceArgs<double>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace ukd
