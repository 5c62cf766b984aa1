// CPU kernels of the UKD op, registered for the CPU dispatch key.
//
// pool every stage of both networks in one parallel pass  ->  [μ; r] = p Wᵀ + b through BLAS  ->  one parallel
// pass over the B rows: the four terms and, when asked, d loss / d [μ; r] and d loss / d logits. The backward
// (head GEMMs, feature gradients as broadcast views) runs in Python.
//
// Every output element is reduced by a single task in a fixed order, and the per-row losses are summed
// sequentially, so results are bit-identical for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ukd_math.h"

namespace ukd {
namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------------ pooling
// Sum of n contiguous elements with 16 independent lanes (vectorised by the compiler, fixed order).
template <typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline acc_t sum_contiguous(const scalar_t* x, int64_t n) {
  constexpr int kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += static_cast<acc_t>(x[i + j]);
  }
  acc_t tail = 0;
  for (; i < n; ++i) tail += static_cast<acc_t>(x[i]);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  }
  return lanes[0] + tail;
}

// The float32 hot loops are compiled twice, for AVX2 and for the x86-64 baseline; the loader picks one per CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UKD_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define UKD_MULTIVERSION
#endif

// acc[j] += Σ_p rows[p·stride + j] for j < width: one channels_last tile.
template <typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline void accumulate_rows(acc_t* acc, const scalar_t* rows, int64_t count, int64_t stride,
                                                   int64_t width) {
  for (int64_t p = 0; p < count; ++p) {
    const scalar_t* row = rows + p * stride;
    for (int64_t j = 0; j < width; ++j) acc[j] += static_cast<acc_t>(row[j]);
  }
}

UKD_MULTIVERSION float sum_f32(const float* x, int64_t n) { return sum_contiguous<float, float>(x, n); }
UKD_MULTIVERSION void accumulate_rows_f32(float* acc, const float* rows, int64_t count, int64_t stride,
                                          int64_t width) {
  accumulate_rows<float, float>(acc, rows, count, stride, width);
}

// Dispatch: the multiversioned float32 loop where there is one, the generic template otherwise.
template <typename scalar_t, typename acc_t>
acc_t sum_fast(const scalar_t* x, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) return sum_f32(x, n);
  return sum_contiguous<scalar_t, acc_t>(x, n);
}
template <typename scalar_t, typename acc_t>
void accumulate_rows_fast(acc_t* acc, const scalar_t* rows, int64_t count, int64_t stride, int64_t width) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    accumulate_rows_f32(acc, rows, count, stride, width);
  } else {
    accumulate_rows<scalar_t, acc_t>(acc, rows, count, stride, width);
  }
}

// One unit of pooling work: channels [c0, c1) of sample b of one stage.
struct PoolTask {
  int stage;
  int64_t b, c0, c1;
};

struct StageView {
  const void* data;
  at::ScalarType dtype;
  int64_t channels, hw, column;  // column: offset of this stage in the concatenated (B, ΣC) output
  bool channels_last;
};

StageView view_of(const Tensor& f, int64_t column) {
  const bool is4d = f.dim() == 4;
  const int64_t hw = is4d ? f.size(2) * f.size(3) : 1;
  const bool cl = is4d && hw > 1 && f.size(1) > 1 && !f.is_contiguous() &&
                  f.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(f.is_contiguous() || cl, "ukd: feature maps must be NCHW- or channels_last-contiguous");
  return {f.data_ptr(), f.scalar_type(), f.size(1), hw, column, cl};
}

// Tasks of roughly `grain` elements each, so a big stage does not become one thread's tail.
std::vector<PoolTask> plan_tasks(const std::vector<StageView>& stages, int64_t batch) {
  constexpr int64_t kGrain = 1 << 15;
  std::vector<PoolTask> tasks;
  for (int s = 0; s < static_cast<int>(stages.size()); ++s) {
    const auto& st = stages[s];
    int64_t per = std::max<int64_t>(1, kGrain / std::max<int64_t>(st.hw, 1));
    if (st.channels_last) per = std::max<int64_t>(per, 64);  // keep rows of ≥ 64 channels contiguous
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t c0 = 0; c0 < st.channels; c0 += per) tasks.push_back({s, b, c0, std::min(st.channels, c0 + per)});
    }
  }
  return tasks;
}

template <typename scalar_t, typename acc_t>
void pool_task(const StageView& st, const PoolTask& t, acc_t* out, int64_t out_stride) {
  const auto* x = static_cast<const scalar_t*>(st.data);
  acc_t* dst = out + t.b * out_stride + st.column;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(st.hw);
  if (!st.channels_last) {
    for (int64_t c = t.c0; c < t.c1; ++c) {
      dst[c] = sum_fast<scalar_t, acc_t>(x + (t.b * st.channels + c) * st.hw, st.hw) * inv_hw;
    }
    return;
  }
  const int64_t width = t.c1 - t.c0;
  std::vector<acc_t> acc(width, acc_t(0));
  const scalar_t* base = x + t.b * st.hw * st.channels + t.c0;
  accumulate_rows_fast<scalar_t, acc_t>(acc.data(), base, st.hw, st.channels, width);
  for (int64_t j = 0; j < width; ++j) dst[t.c0 + j] = acc[j] * inv_hw;
}

template <typename acc_t>
void run_pool_task(const StageView& st, const PoolTask& t, acc_t* out, int64_t out_stride) {
  switch (st.dtype) {
    case at::kFloat: return pool_task<float, acc_t>(st, t, out, out_stride);
    case at::kDouble: return pool_task<double, acc_t>(st, t, out, out_stride);
    case at::kHalf: return pool_task<at::Half, acc_t>(st, t, out, out_stride);
    case at::kBFloat16: return pool_task<at::BFloat16, acc_t>(st, t, out, out_stride);
    default: TORCH_CHECK(false, "ukd: unsupported feature dtype ", st.dtype);
  }
}

// Pools both networks' stages in one parallel pass. Returns (B, ΣC_s) and (B, ΣC_t) in `acc_dtype`.
std::pair<Tensor, Tensor> pool_both(at::TensorList feats_s, at::TensorList feats_t, int64_t batch,
                                    at::ScalarType acc_dtype) {
  std::vector<StageView> stages;
  int64_t cols_s = 0, cols_t = 0;
  for (const auto& f : feats_s) { stages.push_back(view_of(f, cols_s)); cols_s += f.size(1); }
  const size_t n_student = stages.size();
  for (const auto& f : feats_t) { stages.push_back(view_of(f, cols_t)); cols_t += f.size(1); }
  auto opts = feats_s[0].options().dtype(acc_dtype);
  Tensor pooled_s = at::empty({batch, cols_s}, opts);
  Tensor pooled_t = at::empty({batch, cols_t}, opts);
  const auto tasks = plan_tasks(stages, batch);
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "ukd_pool", [&] {
    scalar_t* out_s = pooled_s.data_ptr<scalar_t>();
    scalar_t* out_t = pooled_t.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto& t = tasks[i];
        const bool student = static_cast<size_t>(t.stage) < n_student;
        run_pool_task<scalar_t>(stages[t.stage], t, student ? out_s : out_t, student ? cols_s : cols_t);
      }
    });
  });
  return {pooled_s, pooled_t};
}

// ----------------------------------------------------------------------------------------- the row pass
// One row of the B×K problem: pointers into the inputs and the outputs.
template <typename T>
struct Row {
  const T *mu_s, *r_s, *mu_t, *r_t, *logit_s, *logit_t, *eps_s, *eps_t;  // eps: null when there is no noise
  T* terms;                                                             // (4,) dist, gauss, supp, logit
  T *grad_y_s, *grad_y_t, *grad_logit_s, *grad_logit_t;                 // null when no gradients are wanted
};

// softmax(x/T) of one row into p; returns its log-sum-exp log Σ_j e^{x_j/T}.
template <typename T>
[[gnu::always_inline]] inline T softmax_row(int64_t k, const T* x, T inv_t, T* p) {
  T m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < k; ++j) m = x[j] > m ? x[j] : m;  // a NaN is skipped here but poisons the sum
  const T shift = m * inv_t;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < k; ++j) {
    p[j] = fexp(x[j] * inv_t - shift);
    sum += p[j];
  }
  const T inv_sum = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) p[j] *= inv_sum;
  return shift + flog(sum);
}

// Every loop below is a branch-free `omp simd` loop over the K classes, so the compiler vectorises each one
// (fexp is a polynomial, selects are blends). Six exps per class: σ_s, σ_t and one softmax numerator for each
// of z_s, z_t, l_s, l_t; every other exp of the math is recovered from those (log-probabilities are x/T − lse).
// `scratch` holds 6·K: σ_s, σ_t, then softmax(x/T) of z_s, z_t, l_s, l_t; z_s and z_t go to `z` (2·K).
// kNoisyS / kNoisyT: whether eps_s / eps_t exist, so a noise-free head reads no ε and costs no branch.
template <typename T, bool kNoisyS, bool kNoisyT>
[[gnu::always_inline]] inline void row_kernel(int64_t k, const Row<T>& in, const RowScales<T>& c, T* scratch, T* z) {
  T *std_s = scratch, *std_t = scratch + k, *z_s = z, *z_t = z + k;
  T *p_zs = scratch + 2 * k, *p_zt = scratch + 3 * k, *p_ls = scratch + 4 * k, *p_lt = scratch + 5 * k;
  const T *mu_s = in.mu_s, *r_s = in.r_s, *mu_t = in.mu_t, *r_t = in.r_t, *es = in.eps_s, *et = in.eps_t;
  const T *ls = in.logit_s, *lt = in.logit_t, inv_t = c.inv_t, bound = c.bound;
  T gauss = 0;
#pragma omp simd reduction(+ : gauss)
  for (int64_t j = 0; j < k; ++j) {
    const T lv_s = clamp_logvar(r_s[j], bound), lv_t = clamp_logvar(r_t[j], bound);
    const T ss = std_of(lv_s), st = std_of(lv_t);
    std_s[j] = ss;
    std_t[j] = st;
    z_s[j] = sample_of(HeadSample<T>{mu_s[j], r_s[j], ss, kNoisyS ? es[j] : T(0), kNoisyS});
    z_t[j] = sample_of(HeadSample<T>{mu_t[j], r_t[j], st, kNoisyT ? et[j] : T(0), kNoisyT});
    gauss += gauss_elem(gauss_terms(mu_s[j], ss, mu_t[j], st), lv_s, lv_t);
  }
  const T lse_zs = softmax_row(k, z_s, inv_t, p_zs), lse_zt = softmax_row(k, z_t, inv_t, p_zt);
  const T lse_ls = softmax_row(k, ls, inv_t, p_ls), lse_lt = softmax_row(k, lt, inv_t, p_lt);
  T kl_dist = 0, kl_supp_s = 0, kl_supp_t = 0, kl_logit = 0;
#pragma omp simd reduction(+ : kl_dist, kl_supp_s, kl_supp_t, kl_logit)
  for (int64_t j = 0; j < k; ++j) {
    const T lzs = z_s[j] * inv_t - lse_zs, lzt = z_t[j] * inv_t - lse_zt;
    const T lls = ls[j] * inv_t - lse_ls, llt = lt[j] * inv_t - lse_lt;
    kl_dist += kl_elem(p_zt[j], lzt, lzs);
    kl_supp_s += kl_elem(p_ls[j], lls, lzs);
    kl_supp_t += kl_elem(p_lt[j], llt, lzt);
    kl_logit += kl_elem(p_lt[j], llt, lls);
  }
  const T t2 = c.temp * c.temp;
  in.terms[0] = t2 * kl_dist;
  in.terms[1] = gauss;
  in.terms[2] = t2 * (kl_supp_s + kl_supp_t);
  in.terms[3] = t2 * kl_logit;
  if (in.grad_y_s == nullptr) return;
  T *gys = in.grad_y_s, *gyt = in.grad_y_t, *gls = in.grad_logit_s, *glt = in.grad_logit_t;
  const KlRows<T> kl{kl_dist, kl_supp_s, kl_supp_t, kl_logit};
  const RowScales<T> scales = c;
  // The per-class arguments are temporaries: a named struct inside an `omp simd` loop becomes a per-lane array in
  // memory, and the loop is no longer vectorised.
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    const RowGrads<T> g = row_grads(
        PerSoftmax<T>{p_zs[j], p_zt[j], p_ls[j], p_lt[j]},
        PerSoftmax<T>{z_s[j] * inv_t - lse_zs, z_t[j] * inv_t - lse_zt, ls[j] * inv_t - lse_ls, lt[j] * inv_t - lse_lt},
        kl, HeadSample<T>{mu_s[j], r_s[j], std_s[j], kNoisyS ? es[j] : T(0), kNoisyS},
        HeadSample<T>{mu_t[j], r_t[j], std_t[j], kNoisyT ? et[j] : T(0), kNoisyT}, scales);
    gys[j] = g.mu_s;
    gys[k + j] = g.raw_logvar_s;
    gyt[j] = g.mu_t;
    gyt[k + j] = g.raw_logvar_t;
    gls[j] = g.logit_s;
    glt[j] = g.logit_t;
  }
}

template <typename T>
[[gnu::always_inline]] inline void row_kernel_for_noise(int64_t k, const Row<T>& in, const RowScales<T>& c,
                                                        T* scratch, T* z) {
  if (in.eps_s != nullptr && in.eps_t != nullptr) return row_kernel<T, true, true>(k, in, c, scratch, z);
  if (in.eps_s != nullptr) return row_kernel<T, true, false>(k, in, c, scratch, z);
  if (in.eps_t != nullptr) return row_kernel<T, false, true>(k, in, c, scratch, z);
  return row_kernel<T, false, false>(k, in, c, scratch, z);
}

// Compiled for AVX2 and the baseline (float and double), the loader picks one per CPU.
UKD_MULTIVERSION void row_kernel_f32(int64_t k, const Row<float>& in, const RowScales<float>& c, float* scratch,
                                     float* z) {
  row_kernel_for_noise<float>(k, in, c, scratch, z);
}
UKD_MULTIVERSION void row_kernel_f64(int64_t k, const Row<double>& in, const RowScales<double>& c, double* scratch,
                                     double* z) {
  row_kernel_for_noise<double>(k, in, c, scratch, z);
}

// One pass over the B rows of [μ; r] (student and teacher) and the logits: per-row terms into `rows` (B, 4)
// and, when the grad pointers are non-null, the gradients of the weighted mean loss.
template <typename T>
void row_pass(int64_t batch, int64_t k, const T* y_s, const T* y_t, const T* l_s, const T* l_t, const T* eps_s,
              const T* eps_t, const LossOptions& options, T* rows, T* gy_s, T* gy_t, T* gl_s, T* gl_t) {
  const RowScales<T> c = row_scales<T>(options, batch);
  const bool grads = gy_s != nullptr;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(8 * k);
    for (int64_t b = begin; b < end; ++b) {
      const T *mu_s = y_s + b * 2 * k, *mu_t = y_t + b * 2 * k;
      const Row<T> row{mu_s, mu_s + k, mu_t, mu_t + k, l_s + b * k, l_t + b * k,
                       eps_s ? eps_s + b * k : nullptr, eps_t ? eps_t + b * k : nullptr, rows + 4 * b,
                       grads ? gy_s + b * 2 * k : nullptr, grads ? gy_t + b * 2 * k : nullptr,
                       grads ? gl_s + b * k : nullptr, grads ? gl_t + b * k : nullptr};
      if constexpr (std::is_same_v<T, float>) {
        row_kernel_f32(k, row, c, scratch.data(), scratch.data() + 6 * k);
      } else {
        row_kernel_f64(k, row, c, scratch.data(), scratch.data() + 6 * k);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_forward_cpu(
    at::TensorList feats_s, at::TensorList feats_t, const Tensor& logits_s, const Tensor& logits_t,
    const Tensor& weight_s, const Tensor& bias_s, const Tensor& weight_t, const Tensor& bias_t,
    const std::optional<Tensor>& noise_s, const std::optional<Tensor>& noise_t, double temperature,
    double dist_weight, double gauss_weight, double supp_weight, double logit_weight, double logvar_bound,
    bool need_grads) {
  const int64_t batch = logits_s.size(0), k = logits_s.size(1);
  const auto dtype = weight_s.scalar_type();
  for (const Tensor* t : {&logits_s, &logits_t, &weight_s, &bias_s, &weight_t, &bias_t}) {
    TORCH_CHECK(t->scalar_type() == dtype && t->is_contiguous(), "ukd: small operands must be contiguous ", dtype);
  }
  auto [pooled_s, pooled_t] = pool_both(feats_s, feats_t, batch, dtype);
  const Tensor y_s = at::addmm(bias_s, pooled_s, weight_s.t());
  const Tensor y_t = at::addmm(bias_t, pooled_t, weight_t.t());

  auto opts = logits_s.options();
  Tensor rows = at::empty({batch, 4}, opts);
  Tensor gy_s, gy_t, gl_s, gl_t;
  if (need_grads) {
    gy_s = at::empty({batch, 2 * k}, opts);
    gy_t = at::empty({batch, 2 * k}, opts);
    gl_s = at::empty({batch, k}, opts);
    gl_t = at::empty({batch, k}, opts);
  } else {
    for (Tensor* t : {&gy_s, &gy_t, &gl_s, &gl_t, &pooled_s, &pooled_t}) *t = at::empty({0}, opts);  // distinct: no aliasing
  }
  const LossOptions options{temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound};
  AT_DISPATCH_FLOATING_TYPES(dtype, "ukd_rows", [&] {
    auto ptr = [&](const Tensor& t) { return need_grads ? t.data_ptr<scalar_t>() : nullptr; };
    auto opt = [&](const std::optional<Tensor>& t) {
      return t.has_value() ? t->data_ptr<scalar_t>() : static_cast<scalar_t*>(nullptr);
    };
    row_pass<scalar_t>(batch, k, y_s.data_ptr<scalar_t>(), y_t.data_ptr<scalar_t>(), logits_s.data_ptr<scalar_t>(),
                       logits_t.data_ptr<scalar_t>(), opt(noise_s), opt(noise_t), options, rows.data_ptr<scalar_t>(),
                       ptr(gy_s), ptr(gy_t), ptr(gl_s), ptr(gl_t));
  });
  // Fixed-order mean over rows, then the weighted sum.
  Tensor components = at::empty({4}, opts);
  AT_DISPATCH_FLOATING_TYPES(dtype, "ukd_reduce", [&] {
    const scalar_t* r = rows.data_ptr<scalar_t>();
    scalar_t* c = components.data_ptr<scalar_t>();
    for (int v = 0; v < 4; ++v) {
      scalar_t acc = 0;
      for (int64_t b = 0; b < batch; ++b) acc += r[4 * b + v];
      c[v] = acc / static_cast<scalar_t>(batch);
    }
  });
  Tensor loss = at::empty({}, opts);
  AT_DISPATCH_FLOATING_TYPES(dtype, "ukd_total", [&] {
    loss.data_ptr<scalar_t>()[0] = weighted_loss(term_weights<scalar_t>(options), components.data_ptr<scalar_t>());
  });
  return {loss, components, pooled_s, pooled_t, gy_s, gy_t, gl_s, gl_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(ukd, CPU, m) {
  m.impl("fused_forward", &fused_forward_cpu);
}

}  // namespace ukd
