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
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
