// Launchers for the CUDA kernels run by cuda_emulator.h; RS_KERNEL_SOURCE names the kernel source
// (rational.cu with its header inlined and its two PTX conversions replaced for the host).
#include "cuda_emulator.h"
#include RS_KERNEL_SOURCE

namespace {

template <typename T>
void forward(int vec, int grid, int block, const void* x, void* y, long long n, const void* num, const void* den) {
  typedef typename rs::Compute<T>::type C;
  constexpr int WIDE = 16 / sizeof(T);
  auto args = [&](auto kernel) {
    emu::launch(kernel, grid, block, (const T*)x, (T*)y, n, (const C*)num, (const C*)den);
  };
  vec == 1 ? args(rational_forward<T, 1>) : args(rational_forward<T, WIDE>);
}

template <typename T>
void backward(int vec, int grid, int block, const void* x, const void* dy, void* dx, long long n, const void* num,
              const void* den, void* grad, long long partials) {
  typedef typename rs::Compute<T>::type C;
  constexpr int WIDE = 16 / sizeof(T);
  auto args = [&](auto kernel) {
    emu::launch(kernel, grid, block, (const T*)x, (const T*)dy, (T*)dx, n, (const C*)num, (const C*)den, (C*)grad, partials);
  };
  vec == 1 ? args(rational_backward<T, 1>) : args(rational_backward<T, WIDE>);
}

}  // namespace

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16
extern "C" void emu_forward(int dtype, int vec, int grid, int block, const void* x, void* y, long long n,
                            const void* num, const void* den) {
  switch (dtype) {
    case 0: forward<float>(vec, grid, block, x, y, n, num, den); break;
    case 1: forward<double>(vec, grid, block, x, y, n, num, den); break;
    case 2: forward<rs::half_t>(vec, grid, block, x, y, n, num, den); break;
    case 3: forward<rs::bf16_t>(vec, grid, block, x, y, n, num, den); break;
  }
}

extern "C" void emu_backward(int dtype, int vec, int grid, int block, const void* x, const void* dy, void* dx,
                             long long n, const void* num, const void* den, void* grad, long long partials) {
  switch (dtype) {
    case 0: backward<float>(vec, grid, block, x, dy, dx, n, num, den, grad, partials); break;
    case 1: backward<double>(vec, grid, block, x, dy, dx, n, num, den, grad, partials); break;
    case 2: backward<rs::half_t>(vec, grid, block, x, dy, dx, n, num, den, grad, partials); break;
    case 3: backward<rs::bf16_t>(vec, grid, block, x, dy, dx, n, num, den, grad, partials); break;
  }
}
