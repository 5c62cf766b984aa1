// CUDA kernels of the UKD op and their launchers (the torch glue is in ukd_cuda.cu).
//
//   pool_kernel           every stage of both networks in one launch; one block per (sample, channel chunk)
//   row_kernel            the row pass, one block per row, the row held in registers (K ≤ 256·kItems)
//   row_stream_kernel     the same for any K, re-reading the row from global memory (L1/L2) in each phase
//   reduce_kernel         the (B, 4) per-row terms to the four means and the loss, in a fixed order
//
// No atomics: every output element is produced by one thread (or one lane group) in a fixed order, so results
// are identical from run to run. All math goes through ukd_math.h, shared with the CPU kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "ukd_cuda.cuh"
#include "ukd_math.h"

namespace ukd {
namespace cuda {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kMaxStages = 16;  // stages per pooling launch; more are split over several launches
constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kReduceThreads = 128;  // one warp per component
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------- element access
// V(S) elements of type S fill one 16-byte vector.
template <typename S>
constexpr int vec_of() {
  return static_cast<int>(16 / sizeof(S));
}

template <typename A>
__device__ __forceinline__ A to_acc(float x) {
  return static_cast<A>(x);
}
template <typename A>
__device__ __forceinline__ A to_acc(double x) {
  return static_cast<A>(x);
}
template <typename A>
__device__ __forceinline__ A to_acc(__half x) {
  return static_cast<A>(__half2float(x));
}
template <typename A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 x) {
  return static_cast<A>(__bfloat162float(x));
}

// One 16-byte read-only load (p 16-byte aligned), widened to the accumulation type.
template <typename A, typename S>
__device__ __forceinline__ void load16(const S* p, A (&out)[vec_of<S>()]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const S* e = reinterpret_cast<const S*>(&raw);
#pragma unroll
  for (int j = 0; j < vec_of<S>(); ++j) out[j] = to_acc<A>(e[j]);
}

// Elements before the first 16-byte boundary of a run starting at p (0 when p is aligned), at most n.
template <typename S>
__device__ __forceinline__ int64_t head_of(const S* p, int64_t n) {
  const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(p) / sizeof(S)) % vec_of<S>());
  return mis == 0 ? 0 : (n < vec_of<S>() - mis ? n : vec_of<S>() - mis);
}

// ------------------------------------------------------------------------------------- pooling: the plan
struct PoolStage {
  const void* feat;
  void* pooled;
  int64_t pooled_stride, column, channels, hw;
  int64_t first_block, chunks;  // this stage owns blocks [first_block, first_block + batch·chunks)
  int32_t chunk_channels;
  DType dtype;
  int8_t nhwc;        // channels-last walk: NHWC memory, or hw = 1 where both layouts coincide
  int8_t aligned;     // nhwc: C is a multiple of the vector width and the data 16-byte aligned
  int8_t lanes_log2;  // NCHW: lanes per channel; nhwc: threads across the channels of a chunk
};

struct PoolTable {
  PoolStage stage[kMaxStages];
  int count;
};

__device__ __forceinline__ const PoolStage& find_stage(const PoolTable& table, int64_t block) {
  int s = 0;
  while (s + 1 < table.count && table.stage[s + 1].first_block <= block) ++s;
  return table.stage[s];
}

// --------------------------------------------------------------------------------------- pooling: forward
// NCHW: a group of 2^lanes_log2 lanes sums one channel's contiguous run of hw elements (16-byte loads between
// a scalar head and tail), then reduces with shuffles inside the group.
template <typename S, typename A>
__device__ void pool_nchw(const PoolStage& st, int64_t b, int64_t chunk) {
  constexpr int V = vec_of<S>();
  const int lanes = 1 << st.lanes_log2;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t c = chunk * st.chunk_channels + (threadIdx.x >> st.lanes_log2);
  A acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = A(0);
  if (c < st.channels) {
    const S* run = static_cast<const S*>(st.feat) + (b * st.channels + c) * st.hw;
    const int64_t n = st.hw, head = head_of(run, n), nvec = (n - head) / V;
    for (int64_t i = lane; i < head; i += lanes) acc[0] += to_acc<A>(run[i]);
    const S* body = run + head;
#pragma unroll 4
    for (int64_t i = lane; i < nvec; i += lanes) {
      A v[V];
      load16<A>(body + i * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += v[j];
    }
    for (int64_t i = head + nvec * V + lane; i < n; i += lanes) acc[0] += to_acc<A>(run[i]);
  }
  A total = acc[0];
#pragma unroll
  for (int j = 1; j < V; ++j) total += acc[j];
  for (int off = lanes >> 1; off > 0; off >>= 1) total += __shfl_down_sync(kFullMask, total, off, lanes);
  if (lane == 0 && c < st.channels) {
    const A inv_hw = A(1) / static_cast<A>(st.hw);
    static_cast<A*>(st.pooled)[b * st.pooled_stride + st.column + c] = total * inv_hw;
  }
}

// NHWC: 2^lanes_log2 threads cover a chunk of channels, V adjacent channels each (one 16-byte load per
// position when aligned); the other threads of the block take other positions; the rows of partial sums
// are added in shared memory in a fixed order.
template <typename S, typename A>
__device__ void pool_nhwc(const PoolStage& st, int64_t b, int64_t chunk, A* smem) {
  constexpr int V = vec_of<S>();
  const int tx_count = 1 << st.lanes_log2, ty_count = kPoolThreads >> st.lanes_log2;
  const int tx = threadIdx.x & (tx_count - 1), ty = threadIdx.x >> st.lanes_log2;
  const int64_t c0 = chunk * st.chunk_channels, c = c0 + static_cast<int64_t>(tx) * V, C = st.channels;
  A acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = A(0);
  if (c < C) {
    const S* base = static_cast<const S*>(st.feat) + b * st.hw * C + c;
    if (st.aligned) {
#pragma unroll 4
      for (int64_t p = ty; p < st.hw; p += ty_count) {
        A v[V];
        load16<A>(base + p * C, v);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += v[j];
      }
    } else {
      const int64_t width = C - c;
      for (int64_t p = ty; p < st.hw; p += ty_count) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if (j < width) acc[j] += to_acc<A>(base[p * C + j]);
        }
      }
    }
  }
  const A inv_hw = A(1) / static_cast<A>(st.hw);
  A* out = static_cast<A*>(st.pooled) + b * st.pooled_stride + st.column;
  if (ty_count == 1) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (c + j < C) out[c + j] = acc[j] * inv_hw;
    }
    return;
  }
  const int width = tx_count * V;
#pragma unroll
  for (int j = 0; j < V; ++j) smem[ty * width + tx * V + j] = acc[j];
  __syncthreads();
  for (int col = threadIdx.x; col < width; col += kPoolThreads) {
    A sum = smem[col];
    for (int y = 1; y < ty_count; ++y) sum += smem[y * width + col];
    if (c0 + col < C) out[c0 + col] = sum * inv_hw;
  }
}

template <typename S, typename A>
__device__ __forceinline__ void pool_stage(const PoolStage& st, int64_t b, int64_t chunk, A* smem) {
  if (st.nhwc) {
    pool_nhwc<S, A>(st, b, chunk, smem);
  } else {
    pool_nchw<S, A>(st, b, chunk);
  }
}

template <typename A>
__global__ void __launch_bounds__(kPoolThreads) pool_kernel(const PoolTable table) {
  extern __shared__ __align__(16) unsigned char pool_smem[];
  A* smem = reinterpret_cast<A*>(pool_smem);
  const PoolStage& st = find_stage(table, blockIdx.x);
  const int64_t local = static_cast<int64_t>(blockIdx.x) - st.first_block;
  const int64_t b = local / st.chunks, chunk = local % st.chunks;
  switch (st.dtype) {
    case DType::kFloat32: pool_stage<float, A>(st, b, chunk, smem); break;
    case DType::kFloat64: pool_stage<double, A>(st, b, chunk, smem); break;
    case DType::kFloat16: pool_stage<__half, A>(st, b, chunk, smem); break;
    case DType::kBFloat16: pool_stage<__nv_bfloat16, A>(st, b, chunk, smem); break;
  }
}

// ------------------------------------------------------------------------------------------ the row pass
// Vector index v: 0 z_s, 1 z_t, 2 l_s, 3 l_t (as ukd_cpu.cpp's `src`). x = value / T; log p = x − lse.
template <typename T>
struct Row {
  const T *mu_s, *r_s, *mu_t, *r_t, *l_s, *l_t, *eps_s, *eps_t;
};

template <typename T>
__device__ __forceinline__ Row<T> row_of(const RowArgs<T>& a, int64_t b) {
  const T *y_s = a.y_s + b * 2 * a.k, *y_t = a.y_t + b * 2 * a.k;
  return {y_s, y_s + a.k, y_t, y_t + a.k, a.l_s + b * a.k, a.l_t + b * a.k,
          a.eps_s ? a.eps_s + b * a.k : nullptr, a.eps_t ? a.eps_t + b * a.k : nullptr};
}

// A null ε (no noise) is never read: z = μ.
template <typename T>
__device__ __forceinline__ HeadSample<T> head_sample(T mu, T raw_logvar, T std, const T* eps, int64_t j) {
  return {mu, raw_logvar, std, eps ? eps[j] : T(0), eps != nullptr};
}

template <typename T>
struct Elem {
  T std_s, std_t, gauss, x[4];
};

template <typename T>
__device__ __forceinline__ Elem<T> load_elem(const Row<T>& r, const RowArgs<T>& a, int64_t j) {
  const RowScales<T>& c = a.scales;
  const T mu_s = r.mu_s[j], mu_t = r.mu_t[j], r_s = r.r_s[j], r_t = r.r_t[j];
  const T lv_s = clamp_logvar(r_s, c.bound), lv_t = clamp_logvar(r_t, c.bound);
  Elem<T> e;
  e.std_s = std_of(lv_s);
  e.std_t = std_of(lv_t);
  e.gauss = gauss_elem(gauss_terms(mu_s, e.std_s, mu_t, e.std_t), lv_s, lv_t);
  e.x[0] = sample_of(head_sample(mu_s, r_s, e.std_s, r.eps_s, j)) * c.inv_t;
  e.x[1] = sample_of(head_sample(mu_t, r_t, e.std_t, r.eps_t, j)) * c.inv_t;
  e.x[2] = r.l_s[j] * c.inv_t;
  e.x[3] = r.l_t[j] * c.inv_t;
  return e;
}

// kl: the four row sums Σ p_a (log p_a − log p_c) of dist, supp (student), supp (teacher), logit.
template <typename T>
__device__ __forceinline__ void kl_accumulate(T (&kl)[4], const T (&p)[4], const T (&lp)[4]) {
  kl[0] += kl_elem(p[1], lp[1], lp[0]);
  kl[1] += kl_elem(p[2], lp[2], lp[0]);
  kl[2] += kl_elem(p[3], lp[3], lp[1]);
  kl[3] += kl_elem(p[3], lp[3], lp[2]);
}

template <typename T>
__device__ __forceinline__ void write_grads(const RowArgs<T>& a, int64_t b, const Row<T>& r, int64_t j,
                                            const T (&p)[4], const T (&lp)[4], T std_s, T std_t,
                                            const T (&kl)[4]) {
  const RowGrads<T> g = row_grads(PerSoftmax<T>{p[0], p[1], p[2], p[3]}, PerSoftmax<T>{lp[0], lp[1], lp[2], lp[3]},
                                  KlRows<T>{kl[0], kl[1], kl[2], kl[3]},
                                  head_sample(r.mu_s[j], r.r_s[j], std_s, r.eps_s, j),
                                  head_sample(r.mu_t[j], r.r_t[j], std_t, r.eps_t, j), a.scales);
  T *gy_s = a.gy_s + b * 2 * a.k, *gy_t = a.gy_t + b * 2 * a.k;
  gy_s[j] = g.mu_s;
  gy_s[a.k + j] = g.raw_logvar_s;
  gy_t[j] = g.mu_t;
  gy_t[a.k + j] = g.raw_logvar_t;
  a.gl_s[b * a.k + j] = g.logit_s;
  a.gl_t[b * a.k + j] = g.logit_t;
}

// Two blocks per SM (≤ 128 registers) for float32 rows; one for float64, which ptxas otherwise squeezes into
// spills on sm_90.
template <typename T>
constexpr int kRowMinBlocks = sizeof(T) == 8 ? 1 : 2;

template <typename T>
struct RowShared {
  T lse_max[kRowWarps][4], lse_sum[kRowWarps][4], gauss[kRowWarps], kl[kRowWarps][4];
};

// Block reductions: shuffles down to lane 0 of each warp, then every thread combines the per-warp results
// in warp order, so all threads hold the same bits. Each RowShared field serves a single reduction.
template <typename T>
__device__ void block_merge(LogSumExp<T> (&lse)[4], T& gauss, RowShared<T>& sh) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const LogSumExp<T> other{__shfl_down_sync(kFullMask, lse[v].max, off),
                               __shfl_down_sync(kFullMask, lse[v].sum, off)};
      lse[v] = lse_merge(lse[v], other);
    }
    gauss += __shfl_down_sync(kFullMask, gauss, off);
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      sh.lse_max[warp][v] = lse[v].max;
      sh.lse_sum[warp][v] = lse[v].sum;
    }
    sh.gauss[warp] = gauss;
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    lse[v] = {sh.lse_max[0][v], sh.lse_sum[0][v]};
    for (int w = 1; w < warps; ++w) lse[v] = lse_merge(lse[v], LogSumExp<T>{sh.lse_max[w][v], sh.lse_sum[w][v]});
  }
  gauss = sh.gauss[0];
  for (int w = 1; w < warps; ++w) gauss += sh.gauss[w];
}

template <typename T>
__device__ void block_sum4(T (&v)[4], T (&scratch)[kRowWarps][4]) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] += __shfl_down_sync(kFullMask, v[i], off);
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) scratch[warp][i] = v[i];
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[i] = scratch[0][i];
    for (int w = 1; w < warps; ++w) v[i] += scratch[w][i];
  }
}

template <typename T>
__device__ __forceinline__ void write_row(const RowArgs<T>& a, int64_t b, T gauss, const T (&kl)[4]) {
  if (threadIdx.x != 0) return;
  const T t2 = a.scales.temp * a.scales.temp;
  T* row = a.rows + 4 * b;
  row[0] = t2 * kl[0];
  row[1] = gauss;
  row[2] = t2 * (kl[1] + kl[2]);
  row[3] = t2 * kl[3];
}

// One block per row; thread t holds classes t, t + blockDim, ... (kItems of them) in registers. Six exps per
// class, as on the CPU: σ_s, σ_t and one softmax numerator per vector, taken against the thread's own
// maximum; one more exp per thread and vector rescales them to the row's log-sum-exp.
template <typename T, int kItems>
__global__ void __launch_bounds__(kRowThreads, kRowMinBlocks<T>) row_kernel(const RowArgs<T> a) {
  __shared__ RowShared<T> sh;
  const int64_t b = blockIdx.x;
  const Row<T> r = row_of(a, b);
  T x[4][kItems], e[4][kItems], std_s[kItems], std_t[kItems];
  bool valid[kItems];
  T gauss = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    valid[i] = j < a.k;
    std_s[i] = std_t[i] = T(1);
#pragma unroll
    for (int v = 0; v < 4; ++v) x[v][i] = -INFINITY;
    if (valid[i]) {
      const Elem<T> el = load_elem(r, a, j);
      std_s[i] = el.std_s;
      std_t[i] = el.std_t;
      gauss += el.gauss;
#pragma unroll
      for (int v = 0; v < 4; ++v) x[v][i] = el.x[v];
    }
  }
  LogSumExp<T> lse[4];
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    T m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kItems; ++i) m = fmax_(m, x[v][i]);
    T sum = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) sum += (e[v][i] = valid[i] ? fexp(x[v][i] - m) : T(0));
    lse[v] = {m, sum};
  }
  LogSumExp<T> row_lse[4] = {lse[0], lse[1], lse[2], lse[3]};
  block_merge(row_lse, gauss, sh);
  T lse_row[4], rescale[4];
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    lse_row[v] = lse_value(row_lse[v]);
    rescale[v] = fexp(lse[v].max - lse_row[v]);
  }
  T kl[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    T p[4], lp[4];
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      p[v] = e[v][i] = e[v][i] * rescale[v];
      lp[v] = x[v][i] - lse_row[v];
    }
    if (valid[i]) kl_accumulate(kl, p, lp);
  }
  block_sum4(kl, sh.kl);
  write_row(a, b, gauss, kl);
  if (a.gy_s == nullptr) return;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (!valid[i]) continue;
    T p[4], lp[4];
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      p[v] = e[v][i];
      lp[v] = x[v][i] - lse_row[v];
    }
    write_grads(a, b, r, threadIdx.x + static_cast<int64_t>(i) * blockDim.x, p, lp, std_s[i], std_t[i], kl);
  }
}

// Any K: the running log-sum-exp of ukd_math.h in a first pass, then the KL sums, then the gradients, each
// pass recomputing its element from the row in global memory.
template <typename T>
__global__ void __launch_bounds__(kRowThreads, kRowMinBlocks<T>) row_stream_kernel(const RowArgs<T> a) {
  __shared__ RowShared<T> sh;
  const int64_t b = blockIdx.x;
  const Row<T> r = row_of(a, b);
  LogSumExp<T> lse[4] = {lse_init<T>(), lse_init<T>(), lse_init<T>(), lse_init<T>()};
  T gauss = 0;
  for (int64_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    const Elem<T> el = load_elem(r, a, j);
    gauss += el.gauss;
#pragma unroll
    for (int v = 0; v < 4; ++v) lse_push(lse[v], el.x[v]);
  }
  block_merge(lse, gauss, sh);
  T lse_row[4];
#pragma unroll
  for (int v = 0; v < 4; ++v) lse_row[v] = lse_value(lse[v]);
  auto probs = [&](const Elem<T>& el, T (&p)[4], T (&lp)[4]) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      lp[v] = el.x[v] - lse_row[v];
      p[v] = fexp(lp[v]);
    }
  };
  T kl[4] = {0, 0, 0, 0};
  for (int64_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    T p[4], lp[4];
    probs(load_elem(r, a, j), p, lp);
    kl_accumulate(kl, p, lp);
  }
  block_sum4(kl, sh.kl);
  write_row(a, b, gauss, kl);
  if (a.gy_s == nullptr) return;
  for (int64_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    const Elem<T> el = load_elem(r, a, j);
    T p[4], lp[4];
    probs(el, p, lp);
    write_grads(a, b, r, j, p, lp, el.std_s, el.std_t, kl);
  }
}

// ---------------------------------------------------------------------------------------- final reduction
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(const ReduceArgs<T> a) {
  __shared__ T component[4];
  const int v = threadIdx.x >> 5, lane = threadIdx.x & 31;
  T sum = 0;
  for (int64_t b = lane; b < a.batch; b += 32) sum += a.rows[4 * b + v];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(kFullMask, sum, off);
  if (lane == 0) {
    component[v] = sum / static_cast<T>(a.batch);
    a.components[v] = component[v];
  }
  __syncthreads();
  if (threadIdx.x == 0) *a.loss = weighted_loss(a.weights, component);
}

// ----------------------------------------------------------------------------------------------- launchers
int element_size(DType t) {
  switch (t) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}

int ceil_log2(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Fills `out` with the geometry of one stage: which walk, how many lanes, the channel chunk per block.
// Returns the dynamic shared memory the forward kernel needs for it.
size_t plan_stage(const StageDesc& d, size_t acc_size, int64_t first_block, PoolStage& out) {
  const int vec = 16 / element_size(d.dtype);
  out = PoolStage{d.feat, d.pooled, d.pooled_stride, d.column, d.channels, d.hw, first_block, 0, 0, d.dtype,
                  static_cast<int8_t>(d.channels_last || d.hw == 1), 0, 0};
  size_t smem = 0;
  if (out.nhwc) {
    // Up to a warp across the channels; the whole block when there is a single position (a (B, C) input).
    const int cap_log2 = d.hw == 1 ? ceil_log2(kPoolThreads) : 5;
    out.lanes_log2 = static_cast<int8_t>(std::min(ceil_log2(ceil_div(d.channels, vec)), cap_log2));
    out.chunk_channels = (1 << out.lanes_log2) * vec;
    out.aligned = static_cast<int8_t>(d.channels % vec == 0 && reinterpret_cast<uintptr_t>(d.feat) % 16 == 0);
    if ((kPoolThreads >> out.lanes_log2) > 1) smem = static_cast<size_t>(kPoolThreads) * vec * acc_size;
  } else {
    out.lanes_log2 = static_cast<int8_t>(std::min(ceil_log2(ceil_div(d.hw, vec)), 5));
    out.chunk_channels = kPoolThreads >> out.lanes_log2;
  }
  out.chunks = ceil_div(d.channels, out.chunk_channels);
  return smem;
}

template <typename A>
cudaError_t launch_pool_impl(const StageDesc* stages, int count, int64_t batch, cudaStream_t stream) {
  for (int first = 0; first < count; first += kMaxStages) {
    PoolTable table{};
    table.count = std::min(kMaxStages, count - first);
    int64_t blocks = 0;
    size_t smem = 0;
    for (int s = 0; s < table.count; ++s) {
      smem = std::max(smem, plan_stage(stages[first + s], sizeof(A), blocks, table.stage[s]));
      blocks += batch * table.stage[s].chunks;
    }
    if (blocks == 0) continue;
    if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
    pool_kernel<A><<<static_cast<unsigned>(blocks), kPoolThreads, smem, stream>>>(table);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// float64 rows keep at most four classes per thread in registers (eight would take ~250 registers).
template <typename T>
constexpr int max_row_items() {
  return sizeof(T) == 8 ? 4 : 8;
}

template <typename T>
cudaError_t launch_rows_impl(const RowArgs<T>& a, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if (a.batch > INT_MAX) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(a.batch);
  int items = 1;
  while (items < max_row_items<T>() && ceil_div(a.k, items) > kRowThreads) items *= 2;
  if (ceil_div(a.k, items) > kRowThreads) {
    row_stream_kernel<T><<<grid, kRowThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  const int threads = static_cast<int>(std::max<int64_t>(32, ceil_div(ceil_div(a.k, items), 32) * 32));
  switch (items) {
    case 1: row_kernel<T, 1><<<grid, threads, 0, stream>>>(a); break;
    case 2: row_kernel<T, 2><<<grid, threads, 0, stream>>>(a); break;
    case 4: row_kernel<T, 4><<<grid, threads, 0, stream>>>(a); break;
    default:
      if constexpr (max_row_items<T>() >= 8) row_kernel<T, 8><<<grid, threads, 0, stream>>>(a);
      break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_reduce_impl(const ReduceArgs<T>& a, cudaStream_t stream) {
  reduce_kernel<T><<<1, kReduceThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pool(const StageDesc* stages, int count, int64_t batch, bool acc_double, cudaStream_t stream) {
  return acc_double ? launch_pool_impl<double>(stages, count, batch, stream)
                    : launch_pool_impl<float>(stages, count, batch, stream);
}

cudaError_t launch_rows(const RowArgs<float>& args, cudaStream_t stream) { return launch_rows_impl(args, stream); }
cudaError_t launch_rows(const RowArgs<double>& args, cudaStream_t stream) { return launch_rows_impl(args, stream); }
cudaError_t launch_reduce(const ReduceArgs<float>& args, cudaStream_t stream) {
  return launch_reduce_impl(args, stream);
}
cudaError_t launch_reduce(const ReduceArgs<double>& args, cudaStream_t stream) {
  return launch_reduce_impl(args, stream);
}

}  // namespace cuda
}  // namespace ukd
