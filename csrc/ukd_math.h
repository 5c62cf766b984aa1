// The math of the loss (docs/loss.md), once: element-wise terms, derivatives and scales shared by the CPU and
// CUDA kernels.
//
// Every function is a pure scalar function of float or double, `__host__ __device__` under nvcc and an always
// inlined `inline` otherwise (the CPU row loops vectorise only what is inlined into them), so the CPU tests
// exercise exactly what the GPU runs. Notation (one row b, one class k):
//   a, c        logits-like vectors compared by KL_T(a ‖ c), p_a = softmax(a/T), la = log p_a
//   μ, r, ℓ     mean, raw log-variance, ℓ = clamp(r, -L, L);  z = μ + exp(ℓ/2)·ε
//
// No noise: both backends take a null ε pointer for an absent noise tensor and never read it; per element that
// is HeadSample::noisy = false, for which z = μ and dz/dℓ = 0 exactly (not μ + σ·0, NaN where σ overflows).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define UKD_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define UKD_HD inline __attribute__((always_inline))
#else
#define UKD_HD inline
#endif

namespace ukd {

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
UKD_HD float fexp(float x) { return expf(x); }
#else
// Host float exp that the compiler vectorises (no libm call, no branch): e^x = 2^n · e^r with |r| ≤ ln2/2 and a
// degree-6 polynomial for e^r (the coefficients of Cephes' expf; relative error ≈ 2 ulp). NaN stays NaN, overflow → inf, underflow → 0.
UKD_HD float fexp(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365478515625f;
  float clamped = x > hi ? hi : x;
  clamped = clamped < lo ? lo : clamped;
  // n = round(x / ln 2) without a branch or a float→int call: adding 1.5·2²³ leaves n in the low mantissa bits.
  const float shifted = clamped * 1.44269504088896341f + 12582912.f;
  int32_t n;
  std::memcpy(&n, &shifted, sizeof n);
  n -= 0x4B400000;
  const float fn = shifted - 12582912.f;
  const float r = clamped - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += n * (1 << 23);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  out = x < lo ? 0.f : out;
  out = x > hi ? INFINITY : out;
  return x != x ? x : out;
}
#endif
UKD_HD double fexp(double x) { return exp(x); }
UKD_HD float flog(float x) { return logf(x); }
UKD_HD double flog(double x) { return log(x); }
UKD_HD float fmax_(float a, float b) { return fmaxf(a, b); }
UKD_HD double fmax_(double a, double b) { return fmax(a, b); }

// ℓ = clamp(r, -L, L). NaN passes through, as in torch.clamp.
template <typename T>
UKD_HD T clamp_logvar(T r, T bound) {
  return r < -bound ? -bound : (r > bound ? bound : r);
}

// dℓ/dr of torch.clamp: 1 inside the closed interval [-L, L], 0 outside.
template <typename T>
UKD_HD T clamp_grad(T r, T bound) {
  return (r >= -bound && r <= bound) ? T(1) : T(0);
}

// z = μ + σ·ε with σ = exp(ℓ/2), and dz/dℓ = ½·σ·ε.
template <typename T>
UKD_HD T std_of(T logvar) {
  return fexp(logvar * T(0.5));
}
template <typename T>
UKD_HD T sample(T mu, T std, T eps) {
  return mu + std * eps;
}
template <typename T>
UKD_HD T sample_dlogvar(T std, T eps) {
  return T(0.5) * std * eps;
}

// Running (max, Σ exp(x − max)) of a row: the log-sum-exp in one pass over K tiles (used by the GPU kernels;
// the CPU row pass has the whole row in cache and takes the max first).
template <typename T>
struct LogSumExp {
  T max;
  T sum;
};
template <typename T>
UKD_HD LogSumExp<T> lse_init() {
  return {-INFINITY, T(0)};
}
template <typename T>
UKD_HD void lse_push(LogSumExp<T>& acc, T x) {
  if (x > acc.max) {
    acc.sum = acc.sum * fexp(acc.max - x) + T(1);
    acc.max = x;
  } else {
    acc.sum += fexp(x - acc.max);
  }
}
template <typename T>
UKD_HD LogSumExp<T> lse_merge(LogSumExp<T> a, LogSumExp<T> b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  T m = fmax_(a.max, b.max);
  return {m, a.sum * fexp(a.max - m) + b.sum * fexp(b.max - m)};
}
template <typename T>
UKD_HD T lse_value(LogSumExp<T> acc) {
  return acc.max + flog(acc.sum);
}

// One element of Σ_k p_a (log p_a − log p_c): the row KL before the T² factor.
template <typename T>
UKD_HD T kl_elem(T p_a, T log_pa, T log_pc) {
  return p_a * (log_pa - log_pc);
}

// d KL_T(a ‖ c) / d a_k = (T/B)·p_a·(log p_a − log p_c − KL_row); `scale` = weight·T/B.
template <typename T>
UKD_HD T kl_grad_first(T p_a, T log_pa, T log_pc, T kl_row, T scale) {
  return scale * p_a * (log_pa - log_pc - kl_row);
}

// d KL_T(a ‖ c) / d c_k = (T/B)·(p_c − p_a); `scale` = weight·T/B.
template <typename T>
UKD_HD T kl_grad_second(T p_a, T p_c, T scale) {
  return scale * (p_c - p_a);
}

// KL(N_t ‖ N_s) of one dimension, ½ (ℓ_s − ℓ_t + (e^{ℓ_t} + (μ_t − μ_s)²) e^{−ℓ_s} − 1), from the standard
// deviations σ = e^{ℓ/2} already computed for the sample: no exp of its own. Finite in float32 while |ℓ| ≤ 80.
template <typename T>
struct GaussTerms {
  T d;          // μ_t − μ_s
  T var_ratio;  // e^{ℓ_t − ℓ_s}
  T inv_var_s;  // e^{−ℓ_s}
};
template <typename T>
UKD_HD GaussTerms<T> gauss_terms(T mu_s, T std_s, T mu_t, T std_t) {
  const T inv_std_s = T(1) / std_s;
  const T ratio = std_t * inv_std_s;
  return {mu_t - mu_s, ratio * ratio, inv_std_s * inv_std_s};
}
// GaussTerms are passed by value: a reference would keep them in memory and stop the host vectoriser.
template <typename T>
UKD_HD T gauss_elem(GaussTerms<T> g, T logvar_s, T logvar_t) {
  return T(0.5) * (logvar_s - logvar_t + g.var_ratio + g.d * g.d * g.inv_var_s - T(1));
}

// Its derivatives with respect to μ_s, ℓ_s, μ_t, ℓ_t, each multiplied by `scale` (= weight/B).
template <typename T>
struct GaussGrad {
  T mu_s, logvar_s, mu_t, logvar_t;
};
template <typename T>
UKD_HD GaussGrad<T> gauss_grad(GaussTerms<T> g, T scale) {
  const T dmu = scale * g.d * g.inv_var_s;
  return {-dmu, scale * T(0.5) * (T(1) - g.var_ratio - g.d * g.d * g.inv_var_s), dmu,
          scale * T(0.5) * (g.var_ratio - T(1))};
}

// Weight 0 switches a term off entirely: an unused term that overflows must not make the result 0·inf = NaN.
template <typename T>
UKD_HD T weighted_term(T weight, T value) {
  return weight == T(0) ? T(0) : weight * value;
}
template <typename T>
UKD_HD GaussGrad<T> weighted_gauss_grad(GaussTerms<T> g, T weight) {
  const GaussGrad<T> d = gauss_grad(g, weight);
  const bool on = weight != T(0);
  return {on ? d.mu_s : T(0), on ? d.logvar_s : T(0), on ? d.mu_t : T(0), on ? d.logvar_t : T(0)};
}

// ------------------------------------------------------------------------------------ options and scales
// The op's float arguments, as the schema takes them.
struct LossOptions {
  double temperature, dist, gauss, supp, logit, bound;  // T, the four term weights, the log-variance bound L
};

// The constants of the row pass in the compute dtype; s_*: the factor each term's gradient carries in the
// weighted mean over the B rows.
template <typename T>
struct RowScales {
  T temp, inv_t, bound;
  T s_dist, s_supp, s_logit;  // weight·T/B: T²·KL_T differentiated through x/T
  T s_gauss;                  // weight/B
};
template <typename T>
UKD_HD RowScales<T> row_scales(const LossOptions& o, int64_t batch) {
  const T temp = static_cast<T>(o.temperature), per_row = T(1) / static_cast<T>(batch);
  return {temp,
          T(1) / temp,
          static_cast<T>(o.bound),
          static_cast<T>(o.dist) * temp * per_row,
          static_cast<T>(o.supp) * temp * per_row,
          static_cast<T>(o.logit) * temp * per_row,
          static_cast<T>(o.gauss) * per_row};
}

// loss = Σ_v weight_v·component_v over (dist, gauss, supp, logit), a weight-0 term switched off.
template <typename T>
struct TermWeights {
  T dist, gauss, supp, logit;
};
template <typename T>
UKD_HD TermWeights<T> term_weights(const LossOptions& o) {
  return {static_cast<T>(o.dist), static_cast<T>(o.gauss), static_cast<T>(o.supp), static_cast<T>(o.logit)};
}
template <typename T>
UKD_HD T weighted_loss(TermWeights<T> w, const T* components) {
  return weighted_term(w.dist, components[0]) + weighted_term(w.gauss, components[1]) +
         weighted_term(w.supp, components[2]) + weighted_term(w.logit, components[3]);
}

// ------------------------------------------------------------------------------ one element of the row pass
// One class of one head: μ, the raw log-variance r, σ = e^{ℓ/2} and the noise ε (read only when `noisy`).
template <typename T>
struct HeadSample {
  T mu, raw_logvar, std, eps;
  bool noisy;
};
template <typename T>
UKD_HD T sample_of(HeadSample<T> h) {
  return h.noisy ? sample(h.mu, h.std, h.eps) : h.mu;
}

// One value per softmax of the row pass: of z_s, z_t, l_s, l_t (the CUDA kernels' vector index 0..3).
template <typename T>
struct PerSoftmax {
  T z_s, z_t, l_s, l_t;
};

// The row sums Σ_k p_a (log p_a − log p_c), before the T² factor, of the four KL pairs (a ‖ c):
// dist (z_t ‖ z_s), supp_s (l_s ‖ z_s), supp_t (l_t ‖ z_t), logit (l_t ‖ l_s).
template <typename T>
struct KlRows {
  T dist, supp_s, supp_t, logit;
};

// d loss / d of one class's six inputs: μ_s, r_s, μ_t, r_t (the [μ; r] head outputs) and the two logits.
template <typename T>
struct RowGrads {
  T mu_s, raw_logvar_s, mu_t, raw_logvar_t, logit_s, logit_t;
};

// The gradient of the weighted mean loss for one class, from its probabilities `p`, log-probabilities `log_p`,
// the row's KL sums and the two heads' samples. Small structs by value: it inlines into the CPU's simd loop.
template <typename T>
UKD_HD RowGrads<T> row_grads(PerSoftmax<T> p, PerSoftmax<T> log_p, KlRows<T> kl, HeadSample<T> s, HeadSample<T> t,
                             RowScales<T> c) {
  const T dz_t = kl_grad_first(p.z_t, log_p.z_t, log_p.z_s, kl.dist, c.s_dist) + kl_grad_second(p.l_t, p.z_t, c.s_supp);
  const T dz_s = kl_grad_second(p.z_t, p.z_s, c.s_dist) + kl_grad_second(p.l_s, p.z_s, c.s_supp);
  const T logit_s =
      kl_grad_first(p.l_s, log_p.l_s, log_p.z_s, kl.supp_s, c.s_supp) + kl_grad_second(p.l_t, p.l_s, c.s_logit);
  const T logit_t = kl_grad_first(p.l_t, log_p.l_t, log_p.z_t, kl.supp_t, c.s_supp) +
                    kl_grad_first(p.l_t, log_p.l_t, log_p.l_s, kl.logit, c.s_logit);
  const GaussGrad<T> g = weighted_gauss_grad(gauss_terms(s.mu, s.std, t.mu, t.std), c.s_gauss);
  const T dlv_s = s.noisy ? g.logvar_s + dz_s * sample_dlogvar(s.std, s.eps) : g.logvar_s;
  const T dlv_t = t.noisy ? g.logvar_t + dz_t * sample_dlogvar(t.std, t.eps) : g.logvar_t;
  return {dz_s + g.mu_s, dlv_s * clamp_grad(s.raw_logvar, c.bound), dz_t + g.mu_t,
          dlv_t * clamp_grad(t.raw_logvar, c.bound), logit_s, logit_t};
}

}  // namespace ukd
