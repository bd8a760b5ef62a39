// CPU path of the rational activation: the per-element math of rational_math.h in loops the host
// compiler vectorizes, built once per degree pair and version by ratsweep.rational.cpu with
// -march=native -fopenmp. Loaded into a process where torch already holds its libgomp, the
// OpenMP regions run on torch's own thread pool (same soname), so the two never oversubscribe cores.
//
// Backward is one pass: each group of LANES elements (one full vector register) computes dx and adds
// its coefficient-gradient terms into per-lane accumulators that stay in registers; every BLOCK
// elements the lanes are summed into double totals, so sums stay accurate for any tensor size.
// Threads take fixed, contiguous ranges of blocks and add their totals in thread order, so results
// are bitwise reproducible for a given thread count. Elements with |x| > rs::FAR take the far form
// (rational_math.h) in a scalar pass after the vector loop, in the blocks that have any.
#include "rational_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32;
#else
constexpr int VECTOR_BYTES = 16;
#endif
constexpr long long BLOCK = 4096;
constexpr long long CHUNK = 512;  // elements scanned for far values at a time (2-4 KB of x: stays in L1)
// Below this many elements a parallel region costs more than it saves. Smaller tensors take a path
// with no OpenMP region at all: an `if` clause makes GCC emit a serial copy of a `parallel for simd`
// loop that is not vectorized (10x slower per element at 4k elements).
constexpr long long PARALLEL_MIN = 1 << 15;

// y over [start, end) in one vectorized pass; whether any element there needs the far form.
template <typename C>
int near_values(const C* __restrict__ x, C* __restrict__ y, long long start, long long end, const rs::Coefs<C>& c) {
  int far = 0;
#pragma omp simd reduction(| : far)
  for (long long i = start; i < end; ++i) {
    y[i] = rs::value(x[i], c);
    far |= rs::is_far(x[i]);
  }
  return far;
}

template <typename C>
void forward(const C* __restrict__ x, C* __restrict__ y, long long n, const C* num, const C* den) {
  rs::Coefs<C> c;
  rs::load_coefs(num, den, c);
  int far = 0;
  if (n < PARALLEL_MIN) {
    far = near_values(x, y, 0, n, c);
  } else {
    const long long blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) reduction(| : far)
    for (long long b = 0; b < blocks; ++b) far |= near_values(x, y, b * BLOCK, n - b * BLOCK < BLOCK ? n : (b + 1) * BLOCK, c);
  }
  if (far) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (long long i = 0; i < n; ++i) {
      if (rs::is_far(x[i])) y[i] = rs::value_far(x[i], c);
    }
  }
}

template <typename C> bool any_far(const C* __restrict__ x, long long start, long long end) {
  int far = 0;  // an OR, not a max of |x|: a max would let a NaN hide the far elements before it
#pragma omp simd reduction(| : far)
  for (long long i = start; i < end; ++i) far |= rs::is_far(x[i]);
  return far;
}

// The near form over [start, end): dx, and the coefficient-gradient terms into per-lane accumulators.
// With Masked, far elements go through it as x = 0, dy = 0 (finite, adding nothing) for the far form
// to redo; without, the loop does no more than the near form (the selects would cost about half again).
template <bool Masked, typename C, int LANES>
void near_lanes(const C* __restrict__ x, const C* __restrict__ dy, C* __restrict__ dx, long long start, long long end,
                const rs::Coefs<C>& c, C (&acc)[rs::NUM_GRADS][LANES]) {
  long long i = start;
  for (; i + LANES <= end; i += LANES) {
#pragma omp simd
    for (int lane = 0; lane < LANES; ++lane) {
      const bool f = Masked && rs::is_far(x[i + lane]);
      const C xi = f ? C(0) : x[i + lane];
      const rs::Partials<C> g = rs::backward(xi, f ? C(0) : dy[i + lane], c);
      dx[i + lane] = g.dx;
#define RS_LANE_ACC(k) acc[k][lane]
      RS_ADD_GRAD_TERMS(RS_LANE_ACC, xi, g);
#undef RS_LANE_ACC
    }
  }
  for (; i < end; ++i) {
    const bool f = Masked && rs::is_far(x[i]);
    const C xi = f ? C(0) : x[i];
    const rs::Partials<C> g = rs::backward(xi, f ? C(0) : dy[i], c);
    dx[i] = g.dx;
#define RS_FIRST_LANE_ACC(k) acc[k][0]
    RS_ADD_GRAD_TERMS(RS_FIRST_LANE_ACC, xi, g);
#undef RS_FIRST_LANE_ACC
  }
}

// Adds the coefficient-gradient terms of elements [start, end) to total and writes their dx. Chunks of
// it are first scanned for far elements, small enough to stay in L1 for the pass that follows (a scan
// of the whole block would read x from memory twice).
template <typename C>
void backward_block(const C* __restrict__ x, const C* __restrict__ dy, C* __restrict__ dx, long long start,
                    long long end, const rs::Coefs<C>& c, double (&total)[rs::NUM_GRADS]) {
  constexpr int LANES = VECTOR_BYTES / int(sizeof(C));
  C acc[rs::NUM_GRADS][LANES] = {};
  for (long long first = start; first < end; first += CHUNK) {
    const long long last = end - first < CHUNK ? end : first + CHUNK;
    if (!any_far(x, first, last)) {
      near_lanes<false>(x, dy, dx, first, last, c, acc);
      continue;
    }
    near_lanes<true>(x, dy, dx, first, last, c, acc);
    for (long long i = first; i < last; ++i) {
      if (!rs::is_far(x[i])) continue;
      const rs::FarPartials<C> g = rs::backward_far(x[i], dy[i], c);
      dx[i] = g.dx;
      for (int k = 0; k < rs::NUM_GRADS; ++k) total[k] += double(g.grad[k]);
    }
  }
  for (int k = 0; k < rs::NUM_GRADS; ++k) {
    C sum = C(0);
    for (int lane = 0; lane < LANES; ++lane) sum += acc[k][lane];
    total[k] += double(sum);
  }
}

// The coefficient gradients are summed in double and written in the coefficients' type C (what the
// caller's parameters hold), so the caller needs no buffer or cast of its own.
template <typename C>
void backward(const C* __restrict__ x, const C* __restrict__ dy, C* __restrict__ dx, long long n,
              const C* num, const C* den, C* grad_num, C* grad_den) {
  rs::Coefs<C> c;
  rs::load_coefs(num, den, c);
  const long long blocks = (n + BLOCK - 1) / BLOCK;
  double total[rs::NUM_GRADS] = {};
  if (n < PARALLEL_MIN) {  // no OpenMP region (see PARALLEL_MIN); the same blocks, in order
    for (long long b = 0; b < blocks; ++b) {
      const long long start = b * BLOCK;
      backward_block(x, dy, dx, start, n - start < BLOCK ? n : start + BLOCK, c, total);
    }
  } else
#pragma omp parallel
  {
    double mine[rs::NUM_GRADS] = {};
#pragma omp for schedule(static)
    for (long long b = 0; b < blocks; ++b) {
      const long long start = b * BLOCK;
      backward_block(x, dy, dx, start, n - start < BLOCK ? n : start + BLOCK, c, mine);
    }
#ifdef _OPENMP
#pragma omp for ordered schedule(static, 1)
    for (int t = 0; t < omp_get_num_threads(); ++t) {
#pragma omp ordered
      for (int k = 0; k < rs::NUM_GRADS; ++k) total[k] += mine[k];
    }
#else
    for (int k = 0; k < rs::NUM_GRADS; ++k) total[k] += mine[k];
#endif
  }
  for (int j = 0; j < rs::NUM_COEFS; ++j) grad_num[j] = C(total[j]);
  for (int k = 0; k < rs::DEN_COEFS; ++k) grad_den[k] = C(total[rs::NUM_COEFS + k] * double(rs::den_grad_scale(den, k)));
}

}  // namespace

extern "C" {

void rational_forward_f32(const float* x, float* y, long long n, const float* num, const float* den) {
  forward(x, y, n, num, den);
}
void rational_forward_f64(const double* x, double* y, long long n, const double* num, const double* den) {
  forward(x, y, n, num, den);
}
void rational_backward_f32(const float* x, const float* dy, float* dx, long long n, const float* num,
                           const float* den, float* grad_num, float* grad_den) {
  backward(x, dy, dx, n, num, den, grad_num, grad_den);
}
void rational_backward_f64(const double* x, const double* dy, double* dx, long long n, const double* num,
                           const double* den, double* grad_num, double* grad_den) {
  backward(x, dy, dx, n, num, den, grad_num, grad_den);
}

}  // extern "C"
