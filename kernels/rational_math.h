// Per-element math of the rational activation F(x) = P(x) / Q(x), shared by the CUDA kernels
// (rational.cu, compiled by NVRTC/nvcc) and the CPU kernels (rational_cpu.cpp, compiled by the host
// C++ compiler), so both paths compute the same function, with one exception: CuPy compiles with
// -ftz=true, so on the GPU fp32 subnormals (|v| < 1.2e-38) in inputs, intermediates and outputs
// flush to zero, while the CPU path keeps them unless the thread flushes denormals (ratsweep's
// trials do by default; torch.set_flush_denormal). fp64 is unaffected. Tested both ways.
//
// Compile-time configuration (one build per degree pair and version):
//   RS_NUM_DEGREE m   numerator degree, coefficients a_0..a_m
//   RS_DEN_DEGREE n   denominator degree
//   RS_VERSION        0 = A: Q = 1 + sum_k |b_k| |x|^k                (b_1..b_n)
//                     1 = B: Q = 1 + |b_1 x + ... + b_n x^n|          (b_1..b_n)
//                     2 = C: Q = 0.1 + |b_0 + b_1 x + ... + b_n x^n|  (b_0..b_n)
// Version D is B with noisy numerator coefficients; the noise is applied outside the kernels.
//
// Every version is written as Q = q0 + |D(t)| with one polynomial D(t) = d_0 + d_1 t + ... + d_n t^n:
// A uses t = |x| and d = (1, |b_1|, ..., |b_n|) (D >= 1, so q0 = 0 and the outer |.| is the identity),
// B uses t = x, d = (0, b_1, ..., b_n), q0 = 1, and C uses t = x, d = (b_0, ..., b_n), q0 = 0.1.
//
// Gradients, with r = 1/Q, F = P r, s = sign(D) (1 for A):
//   dF/dx   = (P' - F Q') r,          Q' = s D'(t) dt/dx
//   dF/da_j = x^j r
//   dF/dd_k = -F r s t^k              (chained to b_k by sign(b_k) for A, by 1 otherwise)
// Computing F first and dividing by Q once keeps every intermediate near the size of the result, so
// fp32 arithmetic stays finite for |x|^max(m, n) < 3e38 (all fp16 inputs up to degree 8).
#pragma once

#ifndef RS_NUM_DEGREE
#define RS_NUM_DEGREE 5
#endif
#ifndef RS_DEN_DEGREE
#define RS_DEN_DEGREE 4
#endif
#ifndef RS_VERSION
#define RS_VERSION 0
#endif

#if defined(__CUDACC__)
#define RS_FN __device__ __forceinline__
#define RS_UNROLL _Pragma("unroll")
#else
#define RS_FN static inline __attribute__((always_inline))
#define RS_UNROLL _Pragma("GCC unroll 16")
#endif

namespace rs {

constexpr int M = RS_NUM_DEGREE;
constexpr int N = RS_DEN_DEGREE;
constexpr int VERSION = RS_VERSION;
static_assert(M >= 1 && N >= 1, "degrees must be >= 1");
static_assert(VERSION >= 0 && VERSION <= 2, "RS_VERSION must be 0 (A), 1 (B) or 2 (C)");

constexpr int NUM_COEFS = M + 1;                      // a_0..a_m
constexpr int DEN_COEFS = VERSION == 2 ? N + 1 : N;   // trainable b's
constexpr int DEN_FIRST = VERSION == 2 ? 0 : 1;       // power of t that multiplies b[0]
constexpr int NUM_GRADS = NUM_COEFS + DEN_COEFS;      // gradient layout: (a_0..a_m, b...)

#if defined(__CUDACC__)
RS_FN float absval(float v) { return fabsf(v); }
RS_FN double absval(double v) { return fabs(v); }
#else
RS_FN float absval(float v) { return __builtin_fabsf(v); }
RS_FN double absval(double v) { return __builtin_fabs(v); }
#endif

// sign with sign(0) = 0, as torch's abs backward uses
template <typename C> RS_FN C sign(C v) { return (v > C(0) ? C(1) : C(0)) - (v < C(0) ? C(1) : C(0)); }

template <typename C> struct Coefs {
  C a[M + 1];  // numerator
  C d[N + 1];  // denominator polynomial D(t)
};

template <typename C> RS_FN void load_coefs(const C* num, const C* den, Coefs<C>& c) {
  RS_UNROLL
  for (int j = 0; j <= M; ++j) c.a[j] = num[j];
  if (DEN_FIRST == 1) c.d[0] = VERSION == 0 ? C(1) : C(0);
  RS_UNROLL
  for (int k = 0; k < DEN_COEFS; ++k) c.d[k + DEN_FIRST] = VERSION == 0 ? absval(den[k]) : den[k];
}

// dD/db_k expressed per unit of dD/dd_{k + DEN_FIRST}
template <typename C> RS_FN C den_grad_scale(const C* den, int k) {
  return VERSION == 0 ? sign(den[k]) : C(1);
}

template <typename C> RS_FN C q0() { return VERSION == 0 ? C(0) : VERSION == 1 ? C(1) : C(0.1); }

template <typename C> RS_FN C value(C x, const Coefs<C>& c) {
  C p = c.a[M];
  RS_UNROLL
  for (int j = M - 1; j >= 0; --j) p = p * x + c.a[j];
  const C t = VERSION == 0 ? absval(x) : x;
  C s = c.d[N];
  RS_UNROLL
  for (int k = N - 1; k >= 0; --k) s = s * t + c.d[k];
  const C q = VERSION == 0 ? s : q0<C>() + absval(s);
  return p / q;
}

// What one element contributes to the backward pass: dx, and the factors whose power series give the
// coefficient gradients: grad a_j += w x^j, grad d_k += v t^k.
template <typename C> struct Partials {
  C dx, w, v, t;
};

template <typename C> RS_FN Partials<C> backward(C x, C dy, const Coefs<C>& c) {
  C p = c.a[M], dp = C(0);
  RS_UNROLL
  for (int j = M - 1; j >= 0; --j) {
    dp = dp * x + p;
    p = p * x + c.a[j];
  }
  const C t = VERSION == 0 ? absval(x) : x;
  C s = c.d[N], ds = C(0);
  RS_UNROLL
  for (int k = N - 1; k >= 0; --k) {
    ds = ds * t + s;
    s = s * t + c.d[k];
  }
  const C sig = VERSION == 0 ? C(1) : sign(s);
  const C q = VERSION == 0 ? s : q0<C>() + absval(s);
  const C r = C(1) / q;
  const C f = p * r;
  const C dq = sig * ds * (VERSION == 0 ? sign(x) : C(1));
  Partials<C> g;
  g.w = dy * r;
  g.dx = g.w * (dp - f * dq);
  g.v = -(g.w * f) * sig;
  g.t = t;
  return g;
}

}  // namespace rs

// Adds one element's term of every coefficient gradient to ACC(k), in the layout (a_0..a_m, then the
// trainable b's): w x^j for the numerator, v t^k for the denominator. X is the element, G its
// rs::Partials. A macro rather than a function: only written out inline does GCC keep per-lane
// accumulators in vector registers inside an `omp simd` loop (through a helper it spills them to
// memory and runs ~10x slower); nvcc compiles both forms the same.
#define RS_ADD_GRAD_TERMS(ACC, X, G)                                  \
  do {                                                                \
    auto rs_wp = (G).w;                                               \
    RS_UNROLL                                                         \
    for (int rs_j = 0; rs_j < rs::NUM_COEFS; ++rs_j) {                \
      ACC(rs_j) += rs_wp;                                             \
      rs_wp *= (X);                                                   \
    }                                                                 \
    auto rs_vp = rs::DEN_FIRST == 1 ? (G).v * (G).t : (G).v;          \
    RS_UNROLL                                                         \
    for (int rs_k = 0; rs_k < rs::DEN_COEFS; ++rs_k) {                \
      ACC(rs::NUM_COEFS + rs_k) += rs_vp;                             \
      rs_vp *= (G).t;                                                 \
    }                                                                 \
  } while (0)
