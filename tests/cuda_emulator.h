// Runs CUDA kernel source on the CPU, so the kernels' indexing, vector loads, tails, block
// reductions and both gradient-publishing modes are tested on machines without a GPU.
//
// Each block's threads are std::threads; __syncthreads is a block barrier; warp shuffles go through a
// per-warp exchange buffer between two warp barriers (every lane of a warp calls them in lockstep, as
// the real intrinsics require); atomics take a mutex. Blocks run one after another, so `__shared__`
// can be a function-local static. Not emulated: inline PTX (the test substitutes its two fp16
// conversions), timing, memory coalescing.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __CUDACC__ 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

struct Warp {
  std::barrier<> sync{32};
  double values[32];
};

struct Block {
  std::barrier<> sync;
  std::vector<Warp> warps;
  explicit Block(int threads) : sync(threads), warps(threads / 32) {}
};

inline thread_local Block* current = nullptr;
inline std::mutex atomics;

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int grid, int threads, Args... args) {
  gridDim.x = grid;
  blockDim.x = threads;
  for (int b = 0; b < grid; ++b) {
    Block block(threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, b, t] {
        blockIdx.x = b;
        threadIdx.x = t;
        current = &block;
        kernel(args...);
      });
    }
    for (auto& thread : pool) thread.join();
  }
}

}  // namespace emu

inline void __syncthreads() { emu::current->sync.arrive_and_wait(); }

template <typename T> T __shfl_xor_sync(unsigned, T value, int mask) {
  emu::Warp& warp = emu::current->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  warp.values[lane] = double(value);
  warp.sync.arrive_and_wait();
  const T other = T(warp.values[lane ^ mask]);
  warp.sync.arrive_and_wait();
  return other;
}

template <typename T> T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(emu::atomics);
  const T old = *address;
  *address = old + value;
  return old;
}

inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
