// Checks every helper of csrc/ukd_math.h against an independent double-precision formula.
// Built and run by tests/csrc/test_math_header.py; prints one line per failure and exits non-zero on any.
#include <cmath>
#include <cstdio>
#include <vector>

#include "ukd_math.h"

static int failures = 0;
static int checks = 0;

static void expect(const char* what, double got, double want, double rtol) {
  ++checks;
  const double err = std::fabs(got - want);
  if (!(err <= rtol * std::fmax(1.0, std::fabs(want))) && !(std::isnan(got) && std::isnan(want)) &&
      !(std::isinf(got) && got == want)) {
    std::printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    ++failures;
  }
}

// ------------------------------------------------------------------------- scales, weights and the loss sum
static void check_scales_and_weights() {
  using namespace ukd;
  const LossOptions o{4.0, 1.5, 0.25, 0.75, 2.0, 10.0};
  const RowScales<double> c = row_scales<double>(o, 8);
  expect("row_scales temp", c.temp, 4.0, 0.0);
  expect("row_scales inv_t", c.inv_t, 0.25, 0.0);
  expect("row_scales bound", c.bound, 10.0, 0.0);
  expect("row_scales s_dist = w·T/B", c.s_dist, 1.5 * 4.0 / 8, 1e-16);
  expect("row_scales s_supp = w·T/B", c.s_supp, 0.75 * 4.0 / 8, 1e-16);
  expect("row_scales s_logit = w·T/B", c.s_logit, 2.0 * 4.0 / 8, 1e-16);
  expect("row_scales s_gauss = w/B", c.s_gauss, 0.25 / 8, 1e-16);
  const RowScales<float> f = row_scales<float>(LossOptions{3.0, 0.1, 0.2, 0.3, 0.0, 5.0}, 7);
  expect("row_scales<float> inv_t", f.inv_t, 1.0 / 3.0, 1e-7);
  expect("row_scales<float> s_dist", f.s_dist, 0.1 * 3.0 / 7, 1e-7);
  expect("row_scales<float> s_gauss", f.s_gauss, 0.2 / 7, 1e-7);
  expect("row_scales<float> s_logit weight 0", f.s_logit, 0.0, 0.0);
  const TermWeights<double> w = term_weights<double>(o);
  const double comps[4] = {1.0, 2.0, 3.0, 4.0};
  expect("weighted_loss", weighted_loss(w, comps), 1.5 * 1 + 0.25 * 2 + 0.75 * 3 + 2.0 * 4, 1e-15);
  const float inf_gauss[4] = {1.f, INFINITY, 3.f, NAN};
  const TermWeights<float> off = term_weights<float>(LossOptions{4.0, 1.0, 0.0, 2.0, 0.0, 10.0});
  expect("weighted_loss weight 0 on inf and nan", weighted_loss(off, inf_gauss), 7.0, 0.0);
  const TermWeights<float> on = term_weights<float>(LossOptions{4.0, 1.0, 1.0, 2.0, 0.0, 10.0});
  expect("weighted_loss weight 1 on inf", weighted_loss(on, inf_gauss), INFINITY, 0.0);
}

static void check_sample_of() {
  using namespace ukd;
  expect("sample_of noisy", sample_of(HeadSample<double>{0.4, 0.7, std::exp(0.35), -1.3, true}),
         0.4 + std::exp(0.35) * -1.3, 1e-15);
  // No noise is z = μ exactly, even where σ overflows (μ + σ·0 would be NaN) and whatever eps holds.
  expect("sample_of no noise", sample_of(HeadSample<float>{0.4f, 200.f, INFINITY, NAN, false}), 0.4f, 0.0);
}

// ------------------------------------------------------------------------------------ row_grads of one row
// The weighted mean loss as a function of one row's inputs, from plain double formulas (docs/loss.md); the other
// B − 1 rows are constants of the gradient, so it is this row's terms / B.
struct RowInputs {
  std::vector<double> mu_s, r_s, mu_t, r_t, l_s, l_t, eps_s, eps_t;  // eps empty: no noise
};

static double softmax_kl(const std::vector<double>& a, const std::vector<double>& c, double temp) {
  auto log_softmax = [temp](const std::vector<double>& x) {
    double m = -INFINITY, sum = 0;
    for (double v : x) m = std::fmax(m, v / temp);
    for (double v : x) sum += std::exp(v / temp - m);
    std::vector<double> out;
    for (double v : x) out.push_back(v / temp - m - std::log(sum));
    return out;
  };
  const std::vector<double> la = log_softmax(a), lc = log_softmax(c);
  double kl = 0;
  for (size_t k = 0; k < a.size(); ++k) kl += std::exp(la[k]) * (la[k] - lc[k]);
  return temp * temp * kl;
}

static double row_loss(const RowInputs& in, const ukd::LossOptions& o, int batch) {
  const size_t K = in.mu_s.size();
  std::vector<double> z_s(K), z_t(K);
  double gauss = 0;
  for (size_t k = 0; k < K; ++k) {
    const double lv_s = std::fmin(std::fmax(in.r_s[k], -o.bound), o.bound);
    const double lv_t = std::fmin(std::fmax(in.r_t[k], -o.bound), o.bound);
    z_s[k] = in.eps_s.empty() ? in.mu_s[k] : in.mu_s[k] + std::exp(lv_s / 2) * in.eps_s[k];
    z_t[k] = in.eps_t.empty() ? in.mu_t[k] : in.mu_t[k] + std::exp(lv_t / 2) * in.eps_t[k];
    const double d = in.mu_t[k] - in.mu_s[k];
    gauss += 0.5 * (lv_s - lv_t + (std::exp(lv_t) + d * d) * std::exp(-lv_s) - 1);
  }
  const double dist = softmax_kl(z_t, z_s, o.temperature);
  const double supp = softmax_kl(in.l_s, z_s, o.temperature) + softmax_kl(in.l_t, z_t, o.temperature);
  const double logit = softmax_kl(in.l_t, in.l_s, o.temperature);
  return (o.dist * dist + o.gauss * gauss + o.supp * supp + o.logit * logit) / batch;
}

// The arguments row_grads takes for class k, from the same plain formulas.
static ukd::RowGrads<double> row_grads_at(const RowInputs& in, const ukd::LossOptions& o, int batch, size_t k) {
  using namespace ukd;
  const double temp = o.temperature;
  const size_t K = in.mu_s.size();
  std::vector<double> std_s(K), std_t(K), z_s(K), z_t(K);
  for (size_t j = 0; j < K; ++j) {
    std_s[j] = std::exp(std::fmin(std::fmax(in.r_s[j], -o.bound), o.bound) / 2);
    std_t[j] = std::exp(std::fmin(std::fmax(in.r_t[j], -o.bound), o.bound) / 2);
    z_s[j] = in.eps_s.empty() ? in.mu_s[j] : in.mu_s[j] + std_s[j] * in.eps_s[j];
    z_t[j] = in.eps_t.empty() ? in.mu_t[j] : in.mu_t[j] + std_t[j] * in.eps_t[j];
  }
  auto log_prob = [&](const std::vector<double>& x, size_t at) {
    double sum = 0;
    for (double v : x) sum += std::exp(v / temp);
    return x[at] / temp - std::log(sum);
  };
  const PerSoftmax<double> lp{log_prob(z_s, k), log_prob(z_t, k), log_prob(in.l_s, k), log_prob(in.l_t, k)};
  const PerSoftmax<double> p{std::exp(lp.z_s), std::exp(lp.z_t), std::exp(lp.l_s), std::exp(lp.l_t)};
  const KlRows<double> kl{softmax_kl(z_t, z_s, temp) / (temp * temp), softmax_kl(in.l_s, z_s, temp) / (temp * temp),
                          softmax_kl(in.l_t, z_t, temp) / (temp * temp),
                          softmax_kl(in.l_t, in.l_s, temp) / (temp * temp)};
  const HeadSample<double> s{in.mu_s[k], in.r_s[k], std_s[k], in.eps_s.empty() ? 0.0 : in.eps_s[k], !in.eps_s.empty()};
  const HeadSample<double> t{in.mu_t[k], in.r_t[k], std_t[k], in.eps_t.empty() ? 0.0 : in.eps_t[k], !in.eps_t.empty()};
  return row_grads(p, lp, kl, s, t, row_scales<double>(o, batch));
}

static void check_row_grads_against_differences(const char* what, const RowInputs& in, const ukd::LossOptions& o) {
  const int batch = 3;
  const double h = 1e-6;
  for (size_t k = 0; k < in.mu_s.size(); ++k) {
    const ukd::RowGrads<double> g = row_grads_at(in, o, batch, k);
    std::vector<double> RowInputs::*fields[6] = {&RowInputs::mu_s, &RowInputs::r_s, &RowInputs::mu_t,
                                                 &RowInputs::r_t,  &RowInputs::l_s, &RowInputs::l_t};
    const double got[6] = {g.mu_s, g.raw_logvar_s, g.mu_t, g.raw_logvar_t, g.logit_s, g.logit_t};
    const char* names[6] = {"mu_s", "raw_logvar_s", "mu_t", "raw_logvar_t", "logit_s", "logit_t"};
    for (int f = 0; f < 6; ++f) {
      RowInputs plus = in, minus = in;
      (plus.*fields[f])[k] += h;
      (minus.*fields[f])[k] -= h;
      char label[160];
      std::snprintf(label, sizeof label, "row_grads %s d/d%s[%zu]", what, names[f], k);
      expect(label, got[f], (row_loss(plus, o, batch) - row_loss(minus, o, batch)) / (2 * h), 1e-7);
    }
  }
}

static void check_row_grads() {
  using namespace ukd;
  // r_s[2] and r_t[0] lie outside ±L = ±1.5: their gradient is 0 (torch.clamp), as the differences say.
  RowInputs in{{0.3, -1.1, 0.8, 0.05}, {0.4, -0.9, 2.2, 0.1}, {-0.5, 0.9, 0.2, 1.3}, {-1.9, 0.3, 0.6, -0.2},
               {1.2, -0.3, 0.4, 2.0},  {0.1, 0.7, -1.4, 0.9}, {-1.3, 0.6, 0.25, 1.1}, {0.8, -0.4, -1.7, 0.2}};
  const LossOptions all{2.5, 1.0, 0.7, 1.3, 0.6, 1.5};
  check_row_grads_against_differences("all terms, noise", in, all);
  RowInputs quiet = in;
  quiet.eps_s.clear();
  quiet.eps_t.clear();
  check_row_grads_against_differences("all terms, no noise", quiet, all);
  RowInputs half = in;
  half.eps_t.clear();
  check_row_grads_against_differences("student noise only", half, all);
  for (int term = 0; term < 4; ++term) {  // each term alone, so no term's gradient hides in another's
    LossOptions one{2.5, 0.0, 0.0, 0.0, 0.0, 1.5};
    double* weight[4] = {&one.dist, &one.gauss, &one.supp, &one.logit};
    *weight[term] = 1.0;
    const char* names[4] = {"dist only", "gauss only", "supp only", "logit only"};
    check_row_grads_against_differences(names[term], in, one);
  }
  // Hand-derived, K = 1: every softmax is 1 and every KL 0, so only the Gaussian term has a gradient:
  // d/dμ_s = w·(μ_s − μ_t)e^{−ℓ_s}/B, d/dr_s = w·½(1 − (e^{ℓ_t} + d²)e^{−ℓ_s})/B, d/dμ_t = −d/dμ_s,
  // d/dr_t = w·½(e^{ℓ_t − ℓ_s} − 1)/B.
  const double ms = 0.3, ls = -0.4, mt = -0.8, lt = 0.9, w = 0.5, B = 4;
  const RowGrads<double> one = row_grads(
      PerSoftmax<double>{1, 1, 1, 1}, PerSoftmax<double>{0, 0, 0, 0}, KlRows<double>{0, 0, 0, 0},
      HeadSample<double>{ms, ls, std::exp(ls / 2), 0.7, true}, HeadSample<double>{mt, lt, std::exp(lt / 2), -0.2, true},
      row_scales<double>(LossOptions{2.0, 1.0, w, 1.0, 1.0, 10.0}, 4));
  const double d = mt - ms;
  expect("row_grads K=1 mu_s", one.mu_s, w * (ms - mt) * std::exp(-ls) / B, 1e-15);
  expect("row_grads K=1 raw_logvar_s", one.raw_logvar_s, w * 0.5 * (1 - (std::exp(lt) + d * d) * std::exp(-ls)) / B, 1e-15);
  expect("row_grads K=1 mu_t", one.mu_t, -w * (ms - mt) * std::exp(-ls) / B, 1e-15);
  expect("row_grads K=1 raw_logvar_t", one.raw_logvar_t, w * 0.5 * (std::exp(lt - ls) - 1) / B, 1e-15);
  expect("row_grads K=1 logit_s", one.logit_s, 0.0, 0.0);
  expect("row_grads K=1 logit_t", one.logit_t, 0.0, 0.0);
  // Weight 0 switches the Gaussian gradient off even where it overflows; without noise an infinite σ adds no
  // NaN through dz/dℓ = ½σε.
  const float huge = 1e30f;
  const RowGrads<float> off = row_grads(
      PerSoftmax<float>{0.5f, 0.5f, 0.5f, 0.5f}, PerSoftmax<float>{-0.7f, -0.7f, -0.7f, -0.7f},
      KlRows<float>{0.f, 0.f, 0.f, 0.f}, HeadSample<float>{-huge, 300.f, INFINITY, 0.f, false},
      HeadSample<float>{huge, -300.f, 0.f, 0.f, false},
      row_scales<float>(LossOptions{4.0, 1.0, 0.0, 1.0, 1.0, 300.0}, 2));
  for (float v : {off.mu_s, off.raw_logvar_s, off.mu_t, off.raw_logvar_t, off.logit_s, off.logit_t}) {
    expect("row_grads gauss weight 0, overflow, no noise: finite", std::isfinite(v) ? 0.0 : 1.0, 0.0, 0.0);
  }
  const RowGrads<float> on = row_grads(
      PerSoftmax<float>{0.5f, 0.5f, 0.5f, 0.5f}, PerSoftmax<float>{-0.7f, -0.7f, -0.7f, -0.7f},
      KlRows<float>{0.f, 0.f, 0.f, 0.f}, HeadSample<float>{-huge, 80.f, std_of(80.f), 0.f, false},
      HeadSample<float>{huge, -80.f, std_of(-80.f), 0.f, false},
      row_scales<float>(LossOptions{4.0, 1.0, 1.0, 1.0, 1.0, 300.0}, 2));
  expect("row_grads gauss weight 1, overflow is not hidden", std::isfinite(on.raw_logvar_s) ? 0.0 : 1.0, 1.0, 0.0);
}

int main() {
  using namespace ukd;
  // fexp (float: the vectorisable polynomial on the host) over its whole range, and its edge cases.
  for (double x = -87.0; x <= 88.0; x += 0.0173) expect("fexp<float>", fexp(static_cast<float>(x)), std::exp(static_cast<float>(x)), 4e-7);
  expect("fexp<float>(-inf)", fexp(-INFINITY), 0.0, 0.0);
  expect("fexp<float>(-200)", fexp(-200.f), 0.0, 0.0);
  expect("fexp<float>(200)", fexp(200.f), INFINITY, 0.0);
  expect("fexp<float>(nan)", fexp(NAN), NAN, 0.0);
  expect("fexp<double>", fexp(1.25), std::exp(1.25), 1e-15);
  expect("flog", flog(3.5), std::log(3.5), 1e-15);
  expect("flog<float>", flog(3.5f), std::log(3.5), 1e-7);
  expect("fmax_", fmax_(2.0, -1.0), 2.0, 0.0);
  expect("fmax_<float>", fmax_(-2.f, -1.f), -1.0, 0.0);
  // clamp and its torch.clamp gradient (inclusive bounds).
  expect("clamp_logvar above", clamp_logvar(12.0, 10.0), 10.0, 0.0);
  expect("clamp_logvar below", clamp_logvar(-12.0, 10.0), -10.0, 0.0);
  expect("clamp_logvar inside", clamp_logvar(3.0, 10.0), 3.0, 0.0);
  expect("clamp_grad at bound", clamp_grad(10.0, 10.0), 1.0, 0.0);
  expect("clamp_grad outside", clamp_grad(10.5, 10.0), 0.0, 0.0);
  expect("clamp_grad nan", clamp_grad(static_cast<double>(NAN), 10.0), 0.0, 0.0);
  // The sample and its derivative, by central differences.
  const double lv = 0.7, eps = -1.3, mu = 0.4, h = 1e-6;
  expect("std_of", std_of(lv), std::exp(lv / 2), 1e-15);
  expect("sample", sample(mu, std_of(lv), eps), mu + std::exp(lv / 2) * eps, 1e-15);
  expect("sample_dlogvar", sample_dlogvar(std_of(lv), eps),
         (sample(mu, std_of(lv + h), eps) - sample(mu, std_of(lv - h), eps)) / (2 * h), 1e-8);
  // Online log-sum-exp: push, merge of two halves, and an empty side, against the direct formula.
  const std::vector<double> xs = {0.3, -2.0, 5.5, 1.25, -7.0, 5.4, 0.0};
  double direct = 0, m = -INFINITY;
  for (double x : xs) m = std::fmax(m, x);
  for (double x : xs) direct += std::exp(x - m);
  direct = m + std::log(direct);
  LogSumExp<double> all = lse_init<double>(), left = lse_init<double>(), right = lse_init<double>();
  for (size_t i = 0; i < xs.size(); ++i) {
    lse_push(all, xs[i]);
    lse_push(i < 3 ? left : right, xs[i]);
  }
  expect("lse_push/lse_value", lse_value(all), direct, 1e-15);
  expect("lse_merge", lse_value(lse_merge(left, right)), direct, 1e-15);
  expect("lse_merge empty", lse_value(lse_merge(lse_init<double>(), all)), direct, 1e-15);
  // KL terms: Σ kl_elem is KL(p‖q); the two gradient helpers match central differences of T²·KL(softmax(a/T)‖softmax(c/T)).
  const double temp = 2.0;
  const std::vector<double> a = {0.5, -1.0, 2.0}, c = {1.5, 0.25, -0.75};
  auto kl_at = [&](const std::vector<double>& av, const std::vector<double>& cv) {
    double la = -INFINITY, lc = -INFINITY, sa = 0, sc = 0, kl = 0;
    for (double v : av) la = std::fmax(la, v / temp);
    for (double v : cv) lc = std::fmax(lc, v / temp);
    for (double v : av) sa += std::exp(v / temp - la);
    for (double v : cv) sc += std::exp(v / temp - lc);
    la += std::log(sa);
    lc += std::log(sc);
    for (size_t k = 0; k < av.size(); ++k) kl += kl_elem(std::exp(av[k] / temp - la), av[k] / temp - la, cv[k] / temp - lc);
    return temp * temp * kl;
  };
  double la = -INFINITY, lc = -INFINITY, sa = 0, sc = 0;
  for (double v : a) la = std::fmax(la, v / temp);
  for (double v : c) lc = std::fmax(lc, v / temp);
  for (double v : a) sa += std::exp(v / temp - la);
  for (double v : c) sc += std::exp(v / temp - lc);
  la += std::log(sa);
  lc += std::log(sc);
  const double kl_row = kl_at(a, c) / (temp * temp);
  for (size_t k = 0; k < a.size(); ++k) {
    std::vector<double> ap = a, am = a, cp = c, cm = c;
    ap[k] += h; am[k] -= h; cp[k] += h; cm[k] -= h;
    const double pa = std::exp(a[k] / temp - la), pc = std::exp(c[k] / temp - lc);
    expect("kl_grad_first", kl_grad_first(pa, a[k] / temp - la, c[k] / temp - lc, kl_row, temp),
           (kl_at(ap, c) - kl_at(am, c)) / (2 * h), 1e-7);
    expect("kl_grad_second", kl_grad_second(pa, pc, temp), (kl_at(a, cp) - kl_at(a, cm)) / (2 * h), 1e-7);
  }
  // Gaussian KL: the closed form and its four derivatives by central differences.
  auto gauss_at = [&](double ms, double ls, double mt, double lt) {
    return gauss_elem(gauss_terms(ms, std_of(ls), mt, std_of(lt)), ls, lt);
  };
  const double ms = 0.3, ls = -0.4, mt = -0.8, lt = 0.9;
  expect("gauss_elem", gauss_at(ms, ls, mt, lt), 0.5 * (ls - lt + (std::exp(lt) + (mt - ms) * (mt - ms)) * std::exp(-ls) - 1), 1e-14);
  const GaussGrad<double> g = gauss_grad(gauss_terms(ms, std_of(ls), mt, std_of(lt)), 1.0);
  expect("gauss_grad mu_s", g.mu_s, (gauss_at(ms + h, ls, mt, lt) - gauss_at(ms - h, ls, mt, lt)) / (2 * h), 1e-7);
  expect("gauss_grad logvar_s", g.logvar_s, (gauss_at(ms, ls + h, mt, lt) - gauss_at(ms, ls - h, mt, lt)) / (2 * h), 1e-7);
  expect("gauss_grad mu_t", g.mu_t, (gauss_at(ms, ls, mt + h, lt) - gauss_at(ms, ls, mt - h, lt)) / (2 * h), 1e-7);
  expect("gauss_grad logvar_t", g.logvar_t, (gauss_at(ms, ls, mt, lt + h) - gauss_at(ms, ls, mt, lt - h)) / (2 * h), 1e-7);
  // Weight 0 switches a term off: finite zeros even where the term or its gradient is infinite.
  expect("weighted_term", weighted_term(0.25, 8.0), 2.0, 0.0);
  expect("weighted_term(0, inf)", weighted_term(0.0, static_cast<double>(INFINITY)), 0.0, 0.0);
  expect("weighted_term(0, nan)", weighted_term(0.0f, static_cast<float>(NAN)), 0.0, 0.0);
  expect("weighted_term(2, inf)", weighted_term(2.0, static_cast<double>(INFINITY)), INFINITY, 0.0);
  const GaussGrad<double> w = weighted_gauss_grad(gauss_terms(ms, std_of(ls), mt, std_of(lt)), 0.5);
  expect("weighted_gauss_grad mu_s", w.mu_s, 0.5 * g.mu_s, 1e-15);
  expect("weighted_gauss_grad logvar_s", w.logvar_s, 0.5 * g.logvar_s, 1e-15);
  expect("weighted_gauss_grad mu_t", w.mu_t, 0.5 * g.mu_t, 1e-15);
  expect("weighted_gauss_grad logvar_t", w.logvar_t, 0.5 * g.logvar_t, 1e-15);
  const float huge = 1e30f;  // (μ_t − μ_s)² overflows float32
  const GaussGrad<float> off = weighted_gauss_grad(gauss_terms(-huge, std_of(80.f), huge, std_of(-80.f)), 0.f);
  for (float v : {off.mu_s, off.logvar_s, off.mu_t, off.logvar_t}) expect("weighted_gauss_grad weight 0, overflow", v, 0.0, 0.0);
  const GaussGrad<float> on = weighted_gauss_grad(gauss_terms(-huge, std_of(80.f), huge, std_of(-80.f)), 1.f);
  expect("weighted_gauss_grad weight 1, overflow is not hidden", std::isfinite(on.logvar_s) ? 0.0 : 1.0, 1.0, 0.0);
  check_scales_and_weights();
  check_sample_of();
  check_row_grads();
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
