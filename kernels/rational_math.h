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
// The signs of |.|'s derivatives are copysign(1, .), as in the rational_activations kernels the paper's
// authors ran: +1 at +0 (and -1 at -0), not torch's sign(0) = 0. So a coefficient or polynomial that is
// exactly 0 still gets a gradient (version B's identity init has D = 0 everywhere: with sign(0) = 0 its
// denominator could never leave 0).
//
// Two evaluations of the same function, by |x|:
//   near (|x| <= FAR): Horner in x, as above; with |x| <= 2^8 every power stays below 2^64.
//   far  (|x| >  FAR, and +-inf): the function written in u = 1/x, so nothing overflows where F is
//        finite (Horner in x overflows fp32 at |x|^m > 3e38 and returns inf/inf) and the limits at
//        +-inf come out right. With m', n' the degrees left after dropping zero leading coefficients
//        (kept trainable, they may be 0: then the lower ones decide how F grows),
//          P(x) = x^m' p(u),  p(u) = a_m' + a_(m'-1) u + ... + a_0 u^m',
//          D(t) = t^n' d(v),  d(v) = d_n' + d_(n'-1) v + ... + d_0 v^n',  v = 1/t,
//          F = sign(x)^n' x^(m'-n') p(u) / Qv,  Qv = q0 |v|^n' + |d(v)|  (= Q / |x|^n'),
//        and every derivative is written the same way (backward_far).
// Real activations are never far: the kernels test for far elements in bulk (per 16-byte pack on the GPU,
// per chunk on the CPU) and take the near form alone where there are none.
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
#define RS_RARE_FN __device__ __noinline__  // the far form: out of line, so it costs the hot loop no registers
#define RS_UNROLL _Pragma("unroll")
#else
#define RS_FN static inline __attribute__((always_inline))
#define RS_RARE_FN static __attribute__((noinline))
#define RS_UNROLL _Pragma("GCC unroll 16")
#endif

namespace rs {

constexpr int M = RS_NUM_DEGREE;
constexpr int N = RS_DEN_DEGREE;
constexpr int VERSION = RS_VERSION;
static_assert(M >= 1 && N >= 1, "degrees must be >= 1");
static_assert(VERSION >= 0 && VERSION <= 2, "RS_VERSION must be 0 (A), 1 (B) or 2 (C)");

constexpr int MAX_DEGREE = M > N ? M : N;
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

#if defined(__CUDACC__)
RS_FN float unit_sign(float v) { return copysignf(1.0f, v); }
RS_FN double unit_sign(double v) { return copysign(1.0, v); }
#else
RS_FN float unit_sign(float v) { return __builtin_copysignf(1.0f, v); }
RS_FN double unit_sign(double v) { return __builtin_copysign(1.0, v); }
#endif

// v * unit_sign(s): on the GPU one logic instruction on the sign bits (a multiply by +-1 costs a
// constant and a multiply); on the CPU the multiply, which vectorizes.
template <typename C> RS_FN C flip_sign(C v, C s) { return v * unit_sign(s); }
#if defined(__CUDA_ARCH__)
template <> RS_FN float flip_sign(float v, float s) {
  return __uint_as_float(__float_as_uint(v) ^ (__float_as_uint(s) & 0x80000000u));
}
#endif

// 1/q, and p/q. Exact (IEEE) on the CPU and in fp64. On the GPU in fp32, the hardware approximation
// (relative error < 2^-22) refined by one Newton step: within an ulp or two, three instructions instead
// of IEEE division's range check and out-of-line slow path. q here is finite and >= 0.1 (the near form's
// Q, the far form's Qv for sane coefficients); the refinement would turn q = 0 or inf into NaN.
RS_FN double reciprocal(double q) { return 1.0 / q; }
RS_FN double ratio(double p, double q) { return p / q; }
#if defined(__CUDA_ARCH__)
RS_FN float reciprocal(float q) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));
  return fmaf(fmaf(-q, r, 1.0f), r, r);
}
RS_FN float ratio(float p, float q) { return p * reciprocal(q); }
#else
RS_FN float reciprocal(float q) { return 1.0f / q; }
RS_FN float ratio(float p, float q) { return p / q; }
#endif

constexpr float FAR = 256.0f;  // |x| above this: the far form

template <typename C> RS_FN bool is_far(C x) { return absval(x) > C(FAR); }

template <typename C> struct Coefs {
  C a[M + 1];  // numerator
  C d[N + 1];  // denominator polynomial D(t)
  int m, n;    // degrees without zero leading coefficients (the far form's m', n')
};

template <typename C> RS_FN void load_coefs(const C* num, const C* den, Coefs<C>& c) {
  RS_UNROLL
  for (int j = 0; j <= M; ++j) c.a[j] = num[j];
  if (DEN_FIRST == 1) c.d[0] = VERSION == 0 ? C(1) : C(0);
  RS_UNROLL
  for (int k = 0; k < DEN_COEFS; ++k) c.d[k + DEN_FIRST] = VERSION == 0 ? absval(den[k]) : den[k];
  c.m = 0;
  c.n = 0;
  RS_UNROLL
  for (int j = 1; j <= M; ++j) c.m = c.a[j] != C(0) ? j : c.m;
  RS_UNROLL
  for (int k = 1; k <= N; ++k) c.n = c.d[k] != C(0) ? k : c.n;
}

// dD/db_k expressed per unit of dD/dd_{k + DEN_FIRST}
template <typename C> RS_FN C den_grad_scale(const C* den, int k) {
  return VERSION == 0 ? unit_sign(den[k]) : C(1);
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
  return ratio(p, q);
}

// What one element contributes to the backward pass: dx, and the factors whose power series give the
// coefficient gradients: grad a_j += w x^j, grad d_k += v t^k.
template <typename C> struct Partials {
  C dx, w, v;
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
  // sign(D) is 1 for A, where dQ/dx takes x's sign instead (t = |x|)
  const C q = VERSION == 0 ? s : q0<C>() + absval(s);
  const C r = reciprocal(q);
  const C f = p * r;
  const C dq = flip_sign(ds, VERSION == 0 ? x : s);
  Partials<C> g;
  g.w = dy * r;
  g.dx = g.w * (dp - f * dq);
  g.v = VERSION == 0 ? -(g.w * f) : flip_sign(-(g.w * f), s);
  return g;
}

// value * x^e for an integer e of either sign, from x and u = 1/x (|x| > 1 here), one factor at a time:
// every intermediate lies between value and the result, so it is finite wherever the result is.
template <typename C> RS_FN C times_power(C value, C x, C u, int e) {
  const C base = e < 0 ? u : x;
  for (int k = e < 0 ? -e : e; k > 0; --k) value *= base;
  return value;
}

// The far form's pieces at x (see the top of this file).
template <typename C> struct Far {
  C u, v;   // 1/x and 1/t
  C p, dp;  // p(u), p'(u)
  C d, dd;  // d(v), d'(v)
  C r;      // 1 / Qv
};

// The far form divides exactly (it is rare): the GPU's approximate reciprocal turns 1/inf into NaN.
template <typename C> RS_FN Far<C> far_terms(C x, const Coefs<C>& c) {
  Far<C> f;
  f.u = C(1) / x;
  f.v = VERSION == 0 ? absval(f.u) : f.u;
  f.p = c.a[0];
  f.dp = C(0);
  RS_UNROLL
  for (int j = 1; j <= M; ++j) {
    if (j <= c.m) {
      f.dp = f.dp * f.u + f.p;
      f.p = f.p * f.u + c.a[j];
    }
  }
  f.d = c.d[0];
  f.dd = C(0);
  RS_UNROLL
  for (int k = 1; k <= N; ++k) {
    if (k <= c.n) {
      f.dd = f.dd * f.v + f.d;
      f.d = f.d * f.v + c.d[k];
    }
  }
  f.r = C(1) / (times_power(q0<C>(), absval(f.v), C(0), c.n) + absval(f.d));
  return f;
}

template <typename C> RS_RARE_FN C value_far(C x, const Coefs<C>& c) {
  const Far<C> f = far_terms(x, c);
  const C sign_n = (c.n & 1) ? unit_sign(x) : C(1);
  return sign_n * times_power(f.p * f.r, x, f.u, c.m - c.n);
}

template <typename C> struct FarPartials {
  C dx;
  C grad[NUM_GRADS];  // dF/da_j, then dF/dd_k for the trainable b's (layout of RS_ADD_GRAD_TERMS)
};

// The far form's derivatives, times dy:
//   dF/dx   = sign(x)^n' x^(m'-n'-1) [(m' p - u p') - s p (n' d - v d') / Qv] / Qv,   s = sign(d)
//   dF/da_j = sign(x)^n' x^(j-n') / Qv
//   dF/dd_k = -s p / Qv^2 * S t^(m'+k-2n'),   S = sign(x)^m' (A, t = |x|) or sign(x)^n' (B, C, t = x)
template <typename C> RS_RARE_FN FarPartials<C> backward_far(C x, C dy, const Coefs<C>& c) {
  const Far<C> f = far_terms(x, c);
  const C sx = unit_sign(x);
  const C sign_n = (c.n & 1) ? sx : C(1);
  const C s = VERSION == 0 ? C(1) : unit_sign(f.d);
  FarPartials<C> g;
  const C slope = (C(c.m) * f.p - f.u * f.dp) - s * f.p * (C(c.n) * f.d - f.v * f.dd) * f.r;
  g.dx = sign_n * times_power(dy * f.r * slope, x, f.u, c.m - c.n - 1);
  const C w = dy * sign_n * f.r;
  RS_UNROLL
  for (int j = 0; j < NUM_COEFS; ++j) g.grad[j] = times_power(w, x, f.u, j - c.n);
  const C t = VERSION == 0 ? absval(x) : x;
  const C sign_s = VERSION == 0 ? ((c.m & 1) ? sx : C(1)) : sign_n;
  const C v = -dy * s * f.p * sign_s * f.r * f.r;
  RS_UNROLL
  for (int k = 0; k < DEN_COEFS; ++k) g.grad[NUM_COEFS + k] = times_power(v, t, f.v, c.m + k + DEN_FIRST - 2 * c.n);
  return g;
}

}  // namespace rs

// Adds one element's term of every coefficient gradient to ACC(k), in the layout (a_0..a_m, then the
// trainable b's): w x^j for the numerator, v t^k for the denominator, from one table of powers of x
// (t^k = |x^k| for A, where t = |x|): one multiply per power and one multiply-add per term. X is the
// element, G its rs::Partials. A macro rather than a function: only written out inline does GCC keep
// per-lane accumulators in vector registers inside an `omp simd` loop (through a helper it spills them
// to memory and runs ~10x slower); nvcc compiles both forms the same.
#define RS_ADD_GRAD_TERMS(ACC, X, G)                                                         \
  do {                                                                                       \
    auto rs_power = (X);                                                                     \
    ACC(0) += (G).w;                                                                         \
    if (rs::DEN_FIRST == 0) ACC(rs::NUM_COEFS) += (G).v;                                     \
    RS_UNROLL                                                                                \
    for (int rs_j = 1; rs_j <= rs::MAX_DEGREE; ++rs_j) {                                     \
      if (rs_j <= rs::M) ACC(rs_j) += (G).w * rs_power;                                      \
      if (rs_j <= rs::N)                                                                     \
        ACC(rs::NUM_COEFS + rs_j - rs::DEN_FIRST) += (G).v * (rs::VERSION == 0 ? rs::absval(rs_power) : rs_power); \
      rs_power *= (X);                                                                       \
    }                                                                                        \
  } while (0)
