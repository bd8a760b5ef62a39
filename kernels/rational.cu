// CUDA path of the rational activation, loaded through cupy.RawModule by ratsweep.rational.cuda.
// Degrees and version are compile-time defines (see rational_math.h); the storage type T and the
// vector width VEC are template parameters picked by name expression. Needs no CUDA headers: fp16 and
// bf16 are converted with PTX / bit operations so every NVRTC and nvcc version compiles it as is.
//
// Forward reads x once and writes y once, VEC elements (16 bytes) per load. Backward reads x and dy,
// writes dx, and reduces every coefficient gradient inside the block (registers -> warp shuffles ->
// shared memory, fp32 or fp64 accumulation), then issues one atomic per coefficient per block, or,
// for a deterministic result, writes per-block partials that the caller sums in a fixed order.
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

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

__device__ __forceinline__ float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ double shfl_xor(double v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

template <typename C> __device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) v += shfl_xor(v, mask);
  return v;
}

}  // namespace rs

constexpr int RS_MAX_WARPS = 32;
#define RS_THREAD_ACC(k) acc[k]

template <typename T, int VEC>
__global__ void rational_forward(const T* __restrict__ x, T* __restrict__ y, long long n,
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
  for (long long i = first; i < nvec; i += stride) {
    const P in = xv[i];
    P out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) rs::store(out.v[e], rs::value(rs::to_compute(in.v[e]), c));
    yv[i] = out;
  }
  for (long long i = nvec * VEC + first; i < n; i += stride) rs::store(y[i], rs::value(rs::to_compute(x[i]), c));
}

// grad: NUM_GRADS accumulators (zeroed by the caller) when partials == 0, else a
// [gridDim.x, NUM_GRADS] array of per-block sums.
template <typename T, int VEC>
__global__ void rational_backward(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, long long n,
                                  const typename rs::Compute<T>::type* __restrict__ num,
                                  const typename rs::Compute<T>::type* __restrict__ den,
                                  typename rs::Compute<T>::type* __restrict__ grad, long long partials) {
  typedef typename rs::Compute<T>::type C;
  typedef rs::Pack<T, VEC> P;
  __shared__ C block_sums[RS_MAX_WARPS][rs::NUM_GRADS];
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
    const P xin = xv[i];
    const P dyin = dyv[i];
    P out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const C xe = rs::to_compute(xin.v[e]);
      const rs::Partials<C> g = rs::backward(xe, C(rs::to_compute(dyin.v[e])), c);
      rs::store(out.v[e], g.dx);
      RS_ADD_GRAD_TERMS(RS_THREAD_ACC, xe, g);
    }
    dxv[i] = out;
  }
  for (long long i = nvec * VEC + first; i < n; i += stride) {
    const C xe = rs::to_compute(x[i]);
    const rs::Partials<C> g = rs::backward(xe, C(rs::to_compute(dy[i])), c);
    rs::store(dx[i], g.dx);
    RS_ADD_GRAD_TERMS(RS_THREAD_ACC, xe, g);
  }

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < rs::NUM_GRADS; ++k) {
    const C s = rs::warp_sum(acc[k]);
    if (lane == 0) block_sums[warp][k] = s;
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int k = 0; k < rs::NUM_GRADS; ++k) {
    C s = rs::warp_sum(lane < warps ? block_sums[lane][k] : C(0));
    if (k >= rs::NUM_COEFS) s *= rs::den_grad_scale(den, k - rs::NUM_COEFS);
    // lane k publishes coefficient k, so the block's stores/atomics go out in parallel
    if (lane == (k & 31)) {
      if (partials) {
        grad[(long long)blockIdx.x * rs::NUM_GRADS + k] = s;
      } else {
        atomicAdd(grad + k, s);
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
template __global__ void rational_backward<float, 4>(const float*, const float*, float*, long long, const float*, const float*, float*, long long);
template __global__ void rational_backward<float, 1>(const float*, const float*, float*, long long, const float*, const float*, float*, long long);
template __global__ void rational_backward<double, 2>(const double*, const double*, double*, long long, const double*, const double*, double*, long long);
template __global__ void rational_backward<rs::half_t, 8>(const rs::half_t*, const rs::half_t*, rs::half_t*, long long, const float*, const float*, float*, long long);
template __global__ void rational_backward<rs::bf16_t, 8>(const rs::bf16_t*, const rs::bf16_t*, rs::bf16_t*, long long, const float*, const float*, float*, long long);
#endif
