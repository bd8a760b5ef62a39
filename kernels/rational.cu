// CUDA path of the rational activation, loaded through cupy.RawModule by ratsweep.rational.cuda.
// Degrees and version are compile-time defines (see rational_math.h); the storage type T and the
// vector width VEC are template parameters picked by name expression. Needs no CUDA headers: fp16 and
// bf16 are converted with PTX / bit operations so every NVRTC and nvcc version compiles it as is.
//
// Forward reads x once and writes y once, VEC elements (16 bytes) per load, RS_LOADS loads in flight
// per thread. Backward reads x and dy, writes dx, and reduces every coefficient gradient in one launch:
// registers -> warp shuffles -> shared memory per block (fp32 or fp64 accumulation), one row of
// per-block sums in a workspace, and the last block to finish sums the rows in a fixed order, so the
// gradients are bitwise reproducible for a given launch geometry and need no zero-fill or atomics on
// them. The launcher sizes the grid to one wave of resident blocks (CUDA's occupancy query per
// compiled kernel) and the kernels stride over the rest.
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

}  // namespace rs

template <typename T, int VEC>
__global__ void __launch_bounds__(RS_BLOCK)
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
    for (int u = 0; u < RS_LOADS; ++u) {
      P out;
#pragma unroll
      for (int e = 0; e < VEC; ++e) rs::store(out.v[e], rs::value(rs::to_compute(in[u].v[e]), c));
      yv[i + u * stride] = out;
    }
  }
  for (; i < nvec; i += stride) {  // the packs left over for fewer than RS_LOADS loads
    const P in = xv[i];
    P out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) rs::store(out.v[e], rs::value(rs::to_compute(in.v[e]), c));
    yv[i] = out;
  }
  for (long long i = nvec * VEC + first; i < n; i += stride) rs::store(y[i], rs::value(rs::to_compute(x[i]), c));
}

// grad_num (a_0..a_m) and grad_den (the trainable b's) receive the coefficient gradients. partials is a
// [gridDim.x, NUM_GRADS] workspace; done is a counter that is 0 before the launch and 0 again after it.
template <typename T, int VEC>
__global__ void __launch_bounds__(RS_BLOCK)
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
  rs::block_sum(acc, scratch);
  if (threadIdx.x < 32) {
    // lane k publishes coefficient k, so the block's row goes out in parallel
#pragma unroll
    for (int k = 0; k < rs::NUM_GRADS; ++k) {
      if (lane == (k & 31)) partials[(long long)blockIdx.x * rs::NUM_GRADS + k] = acc[k];
    }
    __threadfence();  // the row is visible device-wide before the count says it is there
    __syncwarp();
    if (lane == 0) last = atomicInc(done, gridDim.x - 1) == gridDim.x - 1;  // the last one resets it to 0
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
