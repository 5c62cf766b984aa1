// The op schemas (one name per op; the tensors' device picks the CPU or CUDA kernel) and the module entry point.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

TORCH_LIBRARY(ukd, m) {
  // Returns (loss, components[4], pooled_s, pooled_t, grad_y_s, grad_y_t, grad_logits_s, grad_logits_t);
  // the last six are empty when need_grads is false. See ukd/op/backends/__init__.py for the full contract.
  m.def(
      "fused_forward(Tensor[] feats_s, Tensor[] feats_t, Tensor logits_s, Tensor logits_t, Tensor weight_s, "
      "Tensor bias_s, Tensor weight_t, Tensor bias_t, Tensor? noise_s, Tensor? noise_t, float temperature, "
      "float dist_weight, float gauss_weight, float supp_weight, float logit_weight, float logvar_bound, "
      "bool need_grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // True when every element of every tensor is finite: the fused path's one-call check of its outputs.
  m.def("all_finite(Tensor[] tensors) -> bool");
}

namespace {

template <typename T>
bool finite_span(const T* x, int64_t n) {
  // x·0 is 0 for finite x and NaN otherwise, so a sum of them stays 0 exactly when all are finite, in any order:
  // kLanes independent sums let the compiler vectorise and keep several adds in flight (one serial sum is
  // latency-bound, ~4 cycles per element).
  constexpr int64_t kLanes = 64;
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += x[i + j] * T(0);
  }
  for (; i < n; ++i) acc[0] += x[i] * T(0);
  T total = 0;
  for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  return total == T(0);
}

bool all_finite(at::TensorList tensors) {
  for (const auto& t : tensors) {
    if (t.numel() == 0 || !t.is_floating_point()) continue;
    if (t.device().is_cpu() && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble)) {
      const bool ok = t.scalar_type() == at::kFloat ? finite_span(t.const_data_ptr<float>(), t.numel())
                                                    : finite_span(t.const_data_ptr<double>(), t.numel());
      if (!ok) return false;
    } else if (!at::isfinite(t).all().item<bool>()) {
      return false;
    }
  }
  return true;
}

}  // namespace

TORCH_LIBRARY_IMPL(ukd, CompositeExplicitAutograd, m) { m.impl("all_finite", &all_finite); }

// `import ukd._C` loads the library above; the module itself holds nothing.
#define UKD_CONCAT_(a, b) a##b
#define UKD_CONCAT(a, b) UKD_CONCAT_(a, b)
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
extern "C" PyMODINIT_FUNC UKD_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
