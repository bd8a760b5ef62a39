// Runs CUDA kernel source on the CPU, so the kernels' indexing, vector loads, tails, block
// reductions and cross-block protocols are tested on machines without a GPU.
//
// Every CUDA thread of every block is a std::thread, all started at once, so blocks run concurrently
// as they do on a GPU: built with -fsanitize=thread, an unsynchronized access between blocks (a plain
// `+=` where an atomic belongs) or between a block's threads (a missing barrier) is reported as a data
// race. __syncthreads is a block barrier; warp shuffles go through a per-warp exchange buffer between
// two warp barriers (every lane of a warp calls them in lockstep, as the real intrinsics require).
// Atomics and fences follow the CUDA memory model's publication pattern, in the C++ terms
// ThreadSanitizer understands: an atomic is relaxed by itself; a __threadfence() before it (since the
// thread's previous atomic) makes it a release, and a __threadfence() after it acquires what it read.
// So a kernel missing the fence on either side of its completion count has a data race here, as it
// may on a GPU. `__shared__` variables need per-block storage, which C++ has no storage class for: the
// test rewrites each declaration into a call to emu::block_shared (see SHARED_DECLARATION in
// emulator.py). Inline PTX is replaced by the emu:: functions below, which do what the PTX manual says.
// Not emulated: timing, memory coalescing, the flushing of subnormal arithmetic (-ftz).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900  // the code paths a Hopper GPU compiles (inline PTX substituted by emulator.py)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

// A barrier on its own mutex: std::barrier waits through a pool of mutexes shared by every barrier in
// the process, which would give ThreadSanitizer happens-before edges between unrelated blocks and hide
// exactly the cross-block races the tests look for.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      all_arrived_.notify_all();
    } else {
      all_arrived_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  const int count_;
  int arrived_ = 0;
  unsigned generation_ = 0;
};

struct Warp {
  Barrier sync{32};
  double values[32];
};

struct Block {
  Barrier sync;
  std::vector<Warp> warps;
  std::mutex shared_lock;
  std::map<const void*, std::unique_ptr<unsigned char[]>> shared;
  explicit Block(int threads) : sync(threads), warps(threads / 32) {}
};

inline thread_local Block* current = nullptr;
inline thread_local bool fenced = false;                   // a __threadfence() since this thread's last atomic
inline thread_local unsigned int* last_atomic = nullptr;   // that atomic's address, until a fence acquires it

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
inline void __threadfence() {
  if (emu::last_atomic != nullptr) {  // "atomic; fence": acquire what the atomic read
    std::atomic_ref<unsigned int>(*emu::last_atomic).load(std::memory_order_acquire);
    emu::last_atomic = nullptr;
  }
  emu::fenced = true;  // "fence; atomic": the next atomic releases
}

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
  std::atomic_ref<unsigned int> counter(*address);
  const auto order = emu::fenced ? std::memory_order_release : std::memory_order_relaxed;
  unsigned int old = counter.load(std::memory_order_relaxed);
  while (!counter.compare_exchange_weak(old, old >= limit ? 0u : old + 1u, order, std::memory_order_relaxed)) {
  }
  emu::fenced = false;
  emu::last_atomic = address;
  return old;
}

namespace emu {

inline unsigned int float_bits(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// rcp.approx.ftz.f32: 1/q, a subnormal q flushed to a zero of its sign first (so +-inf), 1/+-inf = +-0.
// (The hardware's result may be an ulp off the exact one computed here.)
inline float rcp_approx_ftz(float q) {
  if (std::fpclassify(q) == FP_SUBNORMAL) q = std::copysign(0.0f, q);
  return 1.0f / q;
}

// cvt.rn.f16x2.f32 d, a, b: a rounded to nearest even into d's upper half, b into its lower half.
inline unsigned int cvt_rn_f16x2(float a, float b) {
  const _Float16 ha = _Float16(a), hb = _Float16(b);
  unsigned short ua, ub;
  std::memcpy(&ua, &ha, 2);
  std::memcpy(&ub, &hb, 2);
  return (unsigned int)ua << 16 | ub;
}

// cvt.rn.bf16x2.f32 likewise; a NaN becomes the canonical bf16 NaN 0x7fff.
inline unsigned int bf16_rn(float v) {
  const unsigned int u = float_bits(v);
  if (std::isnan(v)) return 0x7fffu;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline unsigned int cvt_rn_bf16x2(float a, float b) { return bf16_rn(a) << 16 | bf16_rn(b); }

}  // namespace emu

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
