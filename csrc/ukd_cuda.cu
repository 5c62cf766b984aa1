// The CUDA-dispatch-key implementation of ukd::fused_forward.
//
// Validation, allocation and the projection [μ; r] = p Wᵀ + b (at::addmm, i.e. cuBLAS) happen here; the kernels
// live in ukd_cuda_kernels.cu behind the torch-free interface of ukd_cuda.cuh. Semantics are those of
// ukd_cpu.cpp, output for output: same shapes, dtypes, memory formats and error messages.
//
// This file holds no device code, so nvcc's device passes (one per architecture) skip it and the torch headers.
#ifndef __CUDA_ARCH__
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "ukd_cuda.cuh"

namespace ukd {
namespace {

using at::Tensor;
using cuda::DType;
using cuda::StageDesc;

DType dtype_of(const Tensor& f) {
  switch (f.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "ukd: unsupported feature dtype ", f.scalar_type());
  }
}

void check_device(const Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.device() == device, "ukd: every tensor must be on ", device, ", got one on ", t.device());
}

// The layout decision of ukd_cpu.cpp's view_of, as a kernel descriptor.
StageDesc desc_of(const Tensor& f, int64_t column, void* pooled, int64_t pooled_stride) {
  const bool is4d = f.dim() == 4;
  const int64_t hw = is4d ? f.size(2) * f.size(3) : 1;
  const bool cl = is4d && hw > 1 && f.size(1) > 1 && !f.is_contiguous() &&
                  f.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(f.is_contiguous() || cl, "ukd: feature maps must be NCHW- or channels_last-contiguous");
  return {f.data_ptr(), dtype_of(f), cl, f.size(1), hw, pooled, pooled_stride, column};
}

template <typename T>
cuda::RowArgs<T> row_args(const Tensor& y_s, const Tensor& y_t, const Tensor& logits_s, const Tensor& logits_t,
                          const std::optional<Tensor>& noise_s, const std::optional<Tensor>& noise_t, Tensor& rows,
                          Tensor* grads, const LossOptions& options) {
  const int64_t batch = logits_s.size(0), k = logits_s.size(1);
  auto opt = [](const std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; };
  auto out = [&](int i) { return grads ? grads[i].data_ptr<T>() : nullptr; };
  return {y_s.data_ptr<T>(), y_t.data_ptr<T>(), logits_s.data_ptr<T>(), logits_t.data_ptr<T>(), opt(noise_s),
          opt(noise_t), rows.data_ptr<T>(), out(0), out(1), out(2), out(3), batch, k,
          row_scales<T>(options, batch)};
}

template <typename T>
void rows_and_loss(const cuda::RowArgs<T>& args, const Tensor& rows, Tensor& components, Tensor& loss,
                   const LossOptions& options, cudaStream_t stream) {
  C10_CUDA_CHECK(cuda::launch_rows(args, stream));
  const cuda::ReduceArgs<T> reduce{rows.data_ptr<T>(), args.batch, term_weights<T>(options),
                                   components.data_ptr<T>(), loss.data_ptr<T>()};
  C10_CUDA_CHECK(cuda::launch_reduce(reduce, stream));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_forward_cuda(
    at::TensorList feats_s, at::TensorList feats_t, const Tensor& logits_s, const Tensor& logits_t,
    const Tensor& weight_s, const Tensor& bias_s, const Tensor& weight_t, const Tensor& bias_t,
    const std::optional<Tensor>& noise_s, const std::optional<Tensor>& noise_t, double temperature,
    double dist_weight, double gauss_weight, double supp_weight, double logit_weight, double logvar_bound,
    bool need_grads) {
  const at::Device device = logits_s.device();
  const c10::cuda::CUDAGuard guard(device);
  const int64_t batch = logits_s.size(0), k = logits_s.size(1);
  const auto dtype = weight_s.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "ukd: the compute dtype must be float32 or float64, got ",
              dtype);
  for (const Tensor* t : {&logits_s, &logits_t, &weight_s, &bias_s, &weight_t, &bias_t}) {
    TORCH_CHECK(t->scalar_type() == dtype && t->is_contiguous(), "ukd: small operands must be contiguous ", dtype);
    check_device(*t, device);
  }
  for (const std::optional<Tensor>* t : {&noise_s, &noise_t}) {
    if (!t->has_value()) continue;
    TORCH_CHECK((*t)->scalar_type() == dtype && (*t)->is_contiguous(), "ukd: small operands must be contiguous ",
                dtype);
    check_device(**t, device);
  }

  auto opts = logits_s.options();
  int64_t cols_s = 0, cols_t = 0;
  for (const auto& f : feats_s) cols_s += f.size(1);
  for (const auto& f : feats_t) cols_t += f.size(1);
  Tensor pooled_s = at::empty({batch, cols_s}, opts);
  Tensor pooled_t = at::empty({batch, cols_t}, opts);
  std::vector<StageDesc> stages;
  int64_t column = 0;
  for (const auto& f : feats_s) {
    check_device(f, device);
    stages.push_back(desc_of(f, column, pooled_s.data_ptr(), cols_s));
    column += f.size(1);
  }
  column = 0;
  for (const auto& f : feats_t) {
    check_device(f, device);
    stages.push_back(desc_of(f, column, pooled_t.data_ptr(), cols_t));
    column += f.size(1);
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool f64 = dtype == at::kDouble;
  C10_CUDA_CHECK(cuda::launch_pool(stages.data(), static_cast<int>(stages.size()), batch, f64, stream));

  const Tensor y_s = at::addmm(bias_s, pooled_s, weight_s.t());
  const Tensor y_t = at::addmm(bias_t, pooled_t, weight_t.t());

  Tensor rows = at::empty({batch, 4}, opts);
  Tensor grads[4];  // grad_y_s, grad_y_t, grad_logits_s, grad_logits_t
  if (need_grads) {
    grads[0] = at::empty({batch, 2 * k}, opts);
    grads[1] = at::empty({batch, 2 * k}, opts);
    grads[2] = at::empty({batch, k}, opts);
    grads[3] = at::empty({batch, k}, opts);
  }
  Tensor components = at::empty({4}, opts);
  Tensor loss = at::empty({}, opts);
  const LossOptions options{temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound};
  Tensor* grad_ptr = need_grads ? grads : nullptr;
  if (f64) {
    rows_and_loss(row_args<double>(y_s, y_t, logits_s, logits_t, noise_s, noise_t, rows, grad_ptr, options), rows,
                  components, loss, options, stream);
  } else {
    rows_and_loss(row_args<float>(y_s, y_t, logits_s, logits_t, noise_s, noise_t, rows, grad_ptr, options), rows,
                  components, loss, options, stream);
  }
  if (!need_grads) {
    for (Tensor* t : {&grads[0], &grads[1], &grads[2], &grads[3], &pooled_s, &pooled_t}) {
      *t = at::empty({0}, opts);  // distinct: no aliasing
    }
  }
  return {loss, components, pooled_s, pooled_t, grads[0], grads[1], grads[2], grads[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ukd, CUDA, m) {
  m.impl("fused_forward", &fused_forward_cuda);
}

}  // namespace ukd

#endif  // __CUDA_ARCH__
