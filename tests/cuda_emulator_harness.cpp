// Launchers for the CUDA kernels run by cuda_emulator.h; RS_KERNEL_SOURCE names the kernel source
// (rational.cu with its header inlined, rewritten for the host by emulator.py).
// Built as a shared library for the tests, or with EMU_MAIN as a program that runs both kernels once
// over several blocks (under -fsanitize=thread, to look for races).
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
              const void* den, void* grad_num, void* grad_den, void* partials, void* done) {
  typedef typename rs::Compute<T>::type C;
  constexpr int WIDE = 16 / sizeof(T);
  auto args = [&](auto kernel) {
    emu::launch(kernel, grid, block, (const T*)x, (const T*)dy, (T*)dx, n, (const C*)num, (const C*)den, (C*)grad_num,
                (C*)grad_den, (C*)partials, (unsigned int*)done);
  };
  vec == 1 ? args(rational_backward<T, 1>) : args(rational_backward<T, WIDE>);
}

}  // namespace

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; vec: 1 for the scalar kernels, else the 16-byte ones
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
                             long long n, const void* num, const void* den, void* grad_num, void* grad_den,
                             void* partials, void* done) {
  switch (dtype) {
    case 0: backward<float>(vec, grid, block, x, dy, dx, n, num, den, grad_num, grad_den, partials, done); break;
    case 1: backward<double>(vec, grid, block, x, dy, dx, n, num, den, grad_num, grad_den, partials, done); break;
    case 2: backward<rs::half_t>(vec, grid, block, x, dy, dx, n, num, den, grad_num, grad_den, partials, done); break;
    case 3: backward<rs::bf16_t>(vec, grid, block, x, dy, dx, n, num, den, grad_num, grad_den, partials, done); break;
  }
}

#ifdef EMU_MAIN
#include <cstdio>

int main() {
  const int grid = 4, block = 64;
  const long long n = 4 * grid * block * 3 + 5;  // several grid-stride rounds and a tail
  std::vector<float> x(n), dy(n), y(n), dx(n), num(rs::NUM_COEFS, 0.25f), den(rs::DEN_COEFS, 0.125f);
  for (long long i = 0; i < n; ++i) {
    x[i] = std::sin(0.37f * i);
    dy[i] = std::cos(0.11f * i);
  }
  std::vector<float> grad_num(rs::NUM_COEFS), grad_den(rs::DEN_COEFS), partials(grid * rs::NUM_GRADS);
  unsigned int done = 0;
  emu_forward(0, 4, grid, block, x.data(), y.data(), n, num.data(), den.data());
  emu_backward(0, 4, grid, block, x.data(), dy.data(), dx.data(), n, num.data(), den.data(), grad_num.data(),
               grad_den.data(), partials.data(), &done);
  std::printf("grad_num[0] %g done %u\n", grad_num[0], done);
  return done == 0 ? 0 : 1;
}
#endif
