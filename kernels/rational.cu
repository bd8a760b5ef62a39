// CUDA path of the rational activation, loaded through cupy.RawModule by ratsweep.rational.cuda.
// Degrees and version are compile-time defines (see rational_math.h); the storage type T and the
// vector width VEC are template parameters picked by name expression. Needs no CUDA headers: fp16 and
// bf16 are converted with PTX / bit operations so every NVRTC and nvcc version compiles it as is.
//
// Forward reads x once and writes y once, VEC elements (16 bytes) per load, RS_LOADS loads in flight
// per thread. Backward reads x and dy, writes dx, and reduces every coefficient gradient in one launch:
// registers -> warp shuffles -> shared memory per block (fp32 or fp64 accumulation), one row of
// per-block sums in a workspace, and the last block to finish sums the rows in a fixed order, so the
// gradients are bitwise reproducible for a given launch geometry and need no atomics on them, and an
// eager launch no zero-fill (the completion counter is left at 0 for the next). The launcher sizes the
// grid to one wave of resident blocks (CUDA's occupancy query per compiled kernel) and the kernels
// stride over the rest.
//
// The kernels are bound by memory bandwidth only if each element costs few instructions (on an H200,
// about 55 per element for a bf16 backward: benchmarks/kernel_static.py models it from the SASS), so
// the per-element path is lean: packs go through the near form (rational_math.h) after one test of
// the pack's largest |x|; a pack holding a far element goes out of line (__noinline__) to a path that
// picks the form per element; fp32 reciprocals are the hardware approximation plus one Newton step;
// 16-bit results are packed two at a time.
#include "rational_math.h"

namespace rs {

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename T> struct Compute { typedef float type; };
template <> struct Compute<double> { typedef double type; };

__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(half_t v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}
__device__ __forceinline__ float to_compute(bf16_t v) { return __uint_as_float(((unsigned int)v.bits) << 16); }

__device__ __forceinline__ void store(float& out, float v) { out = v; }
__device__ __forceinline__ void store(double& out, double v) { out = v; }
__device__ __forceinline__ void store(half_t& out, float v) {
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));
}
__device__ __forceinline__ void store(bf16_t& out, float v) {
  // round to nearest even, as torch does; NaN stays a (quiet) NaN
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out.bits = (unsigned short)((u >> 16) | 0x40u);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    out.bits = (unsigned short)(u >> 16);
  }
}

// Two 16-bit results in one 32-bit word, lo at the lower address: one instruction on sm_80 and later
// (round to nearest even, as store(); a NaN may keep another payload), two conversions before.
__device__ __forceinline__ unsigned int store2(half_t, float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned int word;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));
  return word;
#else
  half_t a, b;
  store(a, lo);
  store(b, hi);
  return (unsigned int)a.bits | ((unsigned int)b.bits << 16);
#endif
}
__device__ __forceinline__ unsigned int store2(bf16_t, float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned int word;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));
  return word;
#else
  bf16_t a, b;
  store(a, lo);
  store(b, hi);
  return (unsigned int)a.bits | ((unsigned int)b.bits << 16);
#endif
}

__device__ __forceinline__ float larger(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double larger(double a, double b) { return fmax(a, b); }

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

// Element e of a pack, in the compute type. 16-bit pairs are read as one 32-bit word: a bf16 value is
// its float's upper half (one instruction apart), an fp16 one converts.
__device__ __forceinline__ float half_of(bf16_t, unsigned int word, int high) {
  return __uint_as_float(high ? word & 0xffff0000u : word << 16);
}
__device__ __forceinline__ float half_of(half_t, unsigned int word, int high) {
  return to_compute(half_t{(unsigned short)(high ? word >> 16 : word & 0xffffu)});
}

// A pack of 16-bit values seen as 32-bit words, through a union (GCC, Clang and NVCC define reading the
// member not last written; NVRTC has no memcpy without headers).
template <typename T, int VEC> union Words {
  Pack<T, VEC> pack;
  unsigned int word[VEC > 1 ? VEC / 2 : 1];  // (one unused word for the scalar packs)
};

template <typename T, int VEC, typename C = typename Compute<T>::type>
__device__ __forceinline__ C at(const Pack<T, VEC>& pack, int e) {
  if constexpr (sizeof(T) == 2 && VEC % 2 == 0) {
    Words<T, VEC> words;
    words.pack = pack;
    return half_of(T{}, words.word[e / 2], e % 2);
  } else {
    return to_compute(pack.v[e]);
  }
}

// Results into a pack, element by element in order; 16-bit pairs are converted together.
template <typename T, int VEC, typename C> struct PackWriter {
  Words<T, VEC> out;
  C low;

  __device__ __forceinline__ void put(int e, C value) {
    if constexpr (sizeof(T) == 2 && VEC % 2 == 0) {
      if (e % 2 == 0) {
        low = value;
      } else {
        out.word[e / 2] = store2(T{}, low, value);
      }
    } else {
      store(out.pack.v[e], value);
    }
  }

  __device__ __forceinline__ Pack<T, VEC> pack() const { return out.pack; }
};

template <typename T, int VEC, typename C = typename Compute<T>::type>
__device__ __forceinline__ C max_abs(const Pack<T, VEC>& pack) {
  C largest = C(0);
#pragma unroll
  for (int e = 0; e < VEC; ++e) largest = larger(largest, absval(at(pack, e)));
  return largest;
}

__device__ __forceinline__ float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ double shfl_xor(double v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

template <typename C> __device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) v += shfl_xor(v, mask);
  return v;
}

}  // namespace rs

// Set by the launcher (ratsweep.rational.cuda), which sizes its grids by them.
#ifndef RS_BLOCK
#define RS_BLOCK 256  // threads per block at most; launches may use fewer
#endif
#ifndef RS_LOADS
#define RS_LOADS 2  // forward: independent 16-byte loads each thread issues before computing
#endif
constexpr int RS_WARPS = (RS_BLOCK + 31) / 32;

#define RS_THREAD_ACC(k) acc[k]

namespace rs {

// Blocks of RS_BLOCK threads that must fit on an SM at once, so that enough loads are in flight to keep
// memory busy: 2 (at most 128 registers per thread); 1 for fp64, whose backward needs more registers
// than that. Stated explicitly because ptxas's own choice varies between instances, down to 64
// registers with spills.
template <typename T> struct MinBlocks { static constexpr int value = sizeof(T) == 8 ? 1 : 2; };

// Replaces acc[k] by its sum over the block in every lane of warp 0, in a fixed order. `scratch` is
// the block's shared memory, free again when the function returns (it ends with a barrier).
template <typename C>
__device__ __forceinline__ void block_sum(C (&acc)[NUM_GRADS], C (&scratch)[RS_WARPS][NUM_GRADS]) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < NUM_GRADS; ++k) {
    const C s = warp_sum(acc[k]);
    if (lane == 0) scratch[warp][k] = s;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < NUM_GRADS; ++k) acc[k] = warp_sum(lane < warps ? scratch[lane][k] : C(0));
  }
  __syncthreads();
}

// F of a pack: the near form after one test of the pack's largest |x|, or, for a pack holding a far
// element, out of line (so that the hot loop spends no registers on it) each element in its own form.
// The out-of-line paths read the coefficients again rather than take the caller's, which would put
// those in memory.
template <typename T, int VEC, typename C>
__device__ __noinline__ Pack<T, VEC> forward_mixed(Pack<T, VEC> in, const C* num, const C* den) {
  Coefs<C> c;
  load_coefs(num, den, c);
  PackWriter<T, VEC, C> y;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const C xe = at(in, e);
    y.put(e, is_far(xe) ? value_far(xe, c) : value(xe, c));
  }
  return y.pack();
}

template <typename T, int VEC, typename C>
__device__ __forceinline__ Pack<T, VEC> forward_pack(const Pack<T, VEC>& in, const Coefs<C>& c, const C* num, const C* den) {
  if (!(max_abs(in) <= C(FAR))) return forward_mixed(in, num, den);
  PackWriter<T, VEC, C> y;
#pragma unroll
  for (int e = 0; e < VEC; ++e) y.put(e, value(at(in, e), c));
  return y.pack();
}

template <typename T, int VEC, typename C> struct MixedPack {
  Pack<T, VEC> dx;
  C grad[NUM_GRADS];
};

template <typename T, int VEC, typename C>
__device__ __noinline__ MixedPack<T, VEC, C> backward_mixed(Pack<T, VEC> xin, Pack<T, VEC> dyin, const C* num, const C* den) {
  Coefs<C> c;
  load_coefs(num, den, c);
  PackWriter<T, VEC, C> dx;
  MixedPack<T, VEC, C> result;
#pragma unroll
  for (int k = 0; k < NUM_GRADS; ++k) result.grad[k] = C(0);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const C xe = at(xin, e), dye = at(dyin, e);
    if (is_far(xe)) {
      const FarPartials<C> g = backward_far(xe, dye, c);
      dx.put(e, g.dx);
#pragma unroll
      for (int k = 0; k < NUM_GRADS; ++k) result.grad[k] += g.grad[k];
    } else {
      const Partials<C> g = backward(xe, dye, c);
      dx.put(e, g.dx);
#define RS_RESULT_ACC(k) result.grad[k]
      RS_ADD_GRAD_TERMS(RS_RESULT_ACC, xe, g);
#undef RS_RESULT_ACC
    }
  }
  result.dx = dx.pack();
  return result;
}

// dx of a pack, its coefficient-gradient terms added to acc; as forward_pack.
template <typename T, int VEC, typename C>
__device__ __forceinline__ Pack<T, VEC> backward_pack(const Pack<T, VEC>& xin, const Pack<T, VEC>& dyin, const Coefs<C>& c,
                                                     const C* num, const C* den, C (&acc)[NUM_GRADS]) {
  if (!(max_abs(xin) <= C(FAR))) {
    const MixedPack<T, VEC, C> mixed = backward_mixed(xin, dyin, num, den);
#pragma unroll
    for (int k = 0; k < NUM_GRADS; ++k) acc[k] += mixed.grad[k];
    return mixed.dx;
  }
  PackWriter<T, VEC, C> dx;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const C xe = at(xin, e);
    const Partials<C> g = backward(xe, at(dyin, e), c);
    dx.put(e, g.dx);
    RS_ADD_GRAD_TERMS(RS_THREAD_ACC, xe, g);
  }
  return dx.pack();
}

}  // namespace rs

template <typename T, int VEC>
__global__ void __launch_bounds__(RS_BLOCK, rs::MinBlocks<T>::value)
rational_forward(const T* __restrict__ x, T* __restrict__ y, long long n,
                 const typename rs::Compute<T>::type* __restrict__ num,
                 const typename rs::Compute<T>::type* __restrict__ den) {
  typedef typename rs::Compute<T>::type C;
  typedef rs::Pack<T, VEC> P;
  rs::Coefs<C> c;
  rs::load_coefs(num, den, c);
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nvec = n / VEC;
  const P* xv = reinterpret_cast<const P*>(x);
  P* yv = reinterpret_cast<P*>(y);
  long long i = first;
  for (; i + (RS_LOADS - 1) * stride < nvec; i += RS_LOADS * stride) {
    P in[RS_LOADS];
#pragma unroll
    for (int u = 0; u < RS_LOADS; ++u) in[u] = xv[i + u * stride];
#pragma unroll
    for (int u = 0; u < RS_LOADS; ++u) yv[i + u * stride] = rs::forward_pack(in[u], c, num, den);
  }
  for (; i < nvec; i += stride) {  // packs left over for fewer than RS_LOADS loads
    const P in = xv[i];
    yv[i] = rs::forward_pack(in, c, num, den);
  }
  const rs::Pack<T, 1>* xs = reinterpret_cast<const rs::Pack<T, 1>*>(x);
  rs::Pack<T, 1>* ys = reinterpret_cast<rs::Pack<T, 1>*>(y);
  for (long long i = nvec * VEC + first; i < n; i += stride) {
    const rs::Pack<T, 1> in = xs[i];
    ys[i] = rs::forward_pack(in, c, num, den);
  }
}

// grad_num (a_0..a_m) and grad_den (the trainable b's) receive the coefficient gradients. partials is a
// [gridDim.x, NUM_GRADS] workspace; done is a counter that is 0 before the launch and 0 again after it.
template <typename T, int VEC>
__global__ void __launch_bounds__(RS_BLOCK, rs::MinBlocks<T>::value)
rational_backward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, long long n,
                  const typename rs::Compute<T>::type* __restrict__ num,
                  const typename rs::Compute<T>::type* __restrict__ den,
                  typename rs::Compute<T>::type* __restrict__ grad_num,
                  typename rs::Compute<T>::type* __restrict__ grad_den,
                  typename rs::Compute<T>::type* partials, unsigned int* done) {
  typedef typename rs::Compute<T>::type C;
  typedef rs::Pack<T, VEC> P;
  __shared__ C scratch[RS_WARPS][rs::NUM_GRADS];
  __shared__ bool last;
  rs::Coefs<C> c;
  rs::load_coefs(num, den, c);
  C acc[rs::NUM_GRADS];
#pragma unroll
  for (int k = 0; k < rs::NUM_GRADS; ++k) acc[k] = C(0);

  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nvec = n / VEC;
  const P* xv = reinterpret_cast<const P*>(x);
  const P* dyv = reinterpret_cast<const P*>(dy);
  P* dxv = reinterpret_cast<P*>(dx);
  for (long long i = first; i < nvec; i += stride) {
    const P xin = xv[i];  // both loads issued before any arithmetic
    const P dyin = dyv[i];
    dxv[i] = rs::backward_pack(xin, dyin, c, num, den, acc);
  }
  const rs::Pack<T, 1>* xs = reinterpret_cast<const rs::Pack<T, 1>*>(x);
  const rs::Pack<T, 1>* dys = reinterpret_cast<const rs::Pack<T, 1>*>(dy);
  rs::Pack<T, 1>* dxs = reinterpret_cast<rs::Pack<T, 1>*>(dx);
  for (long long i = nvec * VEC + first; i < n; i += stride) {
    const rs::Pack<T, 1> xin = xs[i];
    const rs::Pack<T, 1> dyin = dys[i];
    dxs[i] = rs::backward_pack(xin, dyin, c, num, den, acc);
  }

  const int lane = threadIdx.x & 31;
  rs::block_sum(acc, scratch);
  if (threadIdx.x < 32) {
    // lane k publishes coefficient k, so the block's row goes out in parallel
#pragma unroll
    for (int k = 0; k < rs::NUM_GRADS; ++k) {
      if (lane == (k & 31)) partials[(long long)blockIdx.x * rs::NUM_GRADS + k] = acc[k];
    }
    __syncwarp();  // every lane's part of the row is written before lane 0 counts it
    if (lane == 0) {
      // The CUDA memory model's pattern for publishing through a counter: a fence before the atomic
      // releases this block's row (the writes the warp sync ordered before it), and a fence after it
      // acquires the rows of the blocks counted before, for the reads below (__syncthreads passes the
      // ordering on to the block's other threads).
      __threadfence();
      last = atomicInc(done, gridDim.x - 1) == gridDim.x - 1;  // the last one resets it to 0
      __threadfence();
    }
  }
  __syncthreads();
  if (!last) return;

  // The last block sums the rows in a fixed order. volatile: read from L2, past this SM's L1.
  const volatile C* rows = partials;
#pragma unroll
  for (int k = 0; k < rs::NUM_GRADS; ++k) acc[k] = C(0);
  for (unsigned int row = threadIdx.x; row < gridDim.x; row += blockDim.x) {
#pragma unroll
    for (int k = 0; k < rs::NUM_GRADS; ++k) acc[k] += rows[(long long)row * rs::NUM_GRADS + k];
  }
  rs::block_sum(acc, scratch);
  if (threadIdx.x < 32) {
#pragma unroll
    for (int k = 0; k < rs::NUM_GRADS; ++k) {
      if (lane != (k & 31)) continue;
      if (k < rs::NUM_COEFS) {
        grad_num[k] = acc[k];
      } else {
        grad_den[k - rs::NUM_COEFS] = acc[k] * rs::den_grad_scale(den, k - rs::NUM_COEFS);
      }
    }
  }
}

#ifdef RS_INSTANTIATE
// Explicit instances for an offline `nvcc -ptx` / `-cubin` build (CI and resource reports);
// at run time CuPy instantiates the same templates through name expressions.
template __global__ void rational_forward<float, 4>(const float*, float*, long long, const float*, const float*);
template __global__ void rational_forward<float, 1>(const float*, float*, long long, const float*, const float*);
template __global__ void rational_forward<double, 2>(const double*, double*, long long, const double*, const double*);
template __global__ void rational_forward<rs::half_t, 8>(const rs::half_t*, rs::half_t*, long long, const float*, const float*);
template __global__ void rational_forward<rs::bf16_t, 8>(const rs::bf16_t*, rs::bf16_t*, long long, const float*, const float*);
template __global__ void rational_backward<float, 4>(const float*, const float*, float*, long long, const float*, const float*, float*, float*, float*, unsigned int*);
template __global__ void rational_backward<float, 1>(const float*, const float*, float*, long long, const float*, const float*, float*, float*, float*, unsigned int*);
template __global__ void rational_backward<double, 2>(const double*, const double*, double*, long long, const double*, const double*, double*, double*, double*, unsigned int*);
template __global__ void rational_backward<rs::half_t, 8>(const rs::half_t*, const rs::half_t*, rs::half_t*, long long, const float*, const float*, float*, float*, float*, unsigned int*);
template __global__ void rational_backward<rs::bf16_t, 8>(const rs::bf16_t*, const rs::bf16_t*, rs::bf16_t*, long long, const float*, const float*, float*, float*, float*, unsigned int*);
#endif
