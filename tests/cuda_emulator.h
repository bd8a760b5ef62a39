// Runs CUDA kernel source on the CPU, so the kernels' indexing, vector loads, tails, block
// reductions and cross-block protocols are tested on machines without a GPU.
//
// Every CUDA thread of every block is a std::thread, all started at once, so blocks run concurrently
// as they do on a GPU: built with -fsanitize=thread, an unsynchronized access between blocks (a plain
// `+=` where an atomic belongs) or between a block's threads (a missing barrier) is reported as a data
// race. __syncthreads is a block barrier; warp shuffles go through a per-warp exchange buffer between
// two warp barriers (every lane of a warp calls them in lockstep, as the real intrinsics require);
// atomics take one mutex. `__shared__` variables need per-block storage, which C++ has no storage class
// for: the test rewrites each declaration into a call to emu::block_shared (see SHARED_DECLARATION in
// test_cuda_kernels_emulated.py). Not emulated: inline PTX (the test substitutes its two fp16
// conversions), timing, memory coalescing, the weak ordering of GPU memory (fences are full fences).
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __CUDACC__ 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

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
  std::mutex shared_lock;
  std::map<const void*, std::unique_ptr<unsigned char[]>> shared;
  explicit Block(int threads) : sync(threads), warps(threads / 32) {}
};

inline thread_local Block* current = nullptr;
inline std::mutex atomics;

// The calling block's instance of the `__shared__` variable declared at Line, of type T. Filled with
// 0xff bytes (NaN for floats) on first use, like the garbage real shared memory starts with.
template <typename T, int Line> T& block_shared() {
  static const char tag = 0;
  Block& block = *current;
  std::lock_guard<std::mutex> lock(block.shared_lock);
  auto& storage = block.shared[&tag];
  if (!storage) {
    storage.reset(new (std::align_val_t(alignof(T))) unsigned char[sizeof(T)]);
    std::memset(storage.get(), 0xff, sizeof(T));
  }
  return *reinterpret_cast<T*>(storage.get());
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int grid, int threads, Args... args) {
  gridDim.x = grid;
  blockDim.x = threads;
  std::vector<std::unique_ptr<Block>> blocks;
  for (int b = 0; b < grid; ++b) blocks.push_back(std::make_unique<Block>(threads));
  std::vector<std::thread> pool;
  for (int b = 0; b < grid; ++b) {
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, b, t] {
        blockIdx.x = b;
        threadIdx.x = t;
        current = blocks[b].get();
        kernel(args...);
      });
    }
  }
  for (auto& thread : pool) thread.join();
}

}  // namespace emu

inline void __syncthreads() { emu::current->sync.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::current->warps[threadIdx.x / 32].sync.arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T> T __shfl_xor_sync(unsigned, T value, int mask) {
  emu::Warp& warp = emu::current->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  warp.values[lane] = double(value);
  warp.sync.arrive_and_wait();
  const T other = T(warp.values[lane ^ mask]);
  warp.sync.arrive_and_wait();
  return other;
}

inline unsigned int atomicInc(unsigned int* address, unsigned int limit) {
  std::lock_guard<std::mutex> lock(emu::atomics);
  const unsigned int old = *address;
  *address = old >= limit ? 0u : old + 1u;
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
