"""The `cpu` backend: kernels/rational_cpu.cpp, built by the host C++ compiler on first use.

One shared library per (degrees, version) with everything a compile-time constant, so the compiler
unrolls the polynomials and vectorizes the loops (-march=native: 16 fp32 lanes with AVX-512, 8 with
AVX2). Threads are OpenMP's, on torch's own runtime (see the .cpp), so torch.set_num_threads applies.
Builds are cached under ~/.cache/ratsweep (RATSWEEP_CACHE_DIR overrides), keyed by source, flags,
compiler and CPU, and written atomically so parallel trials can share the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

import torch

from ._native import TORCH_PATH_HINT, KernelError, cache_dir, compile_defines, degrees_of, dense, kernel_source, like

# Full-width AVX-512 where the CPU has it (GCC otherwise prefers 256-bit vectors on x86).
_VECTOR_FLAGS = ("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()
FLAGS = (
    "-std=c++17", "-O3", "-march=native", *_VECTOR_FLAGS, "-fno-math-errno",
    "-fno-trapping-math", "-ffp-contract=fast", "-fPIC", "-shared",
)
# Tried in order: OpenMP threads, else a single-threaded (still vectorized) build.
THREADING_FLAGS = (("-fopenmp",), ("-fopenmp-simd",))

_ptr, _i64 = ctypes.c_void_p, ctypes.c_longlong
_SIGNATURES = {
    "rational_forward_f32": [_ptr, _ptr, _i64, _ptr, _ptr],
    "rational_forward_f64": [_ptr, _ptr, _i64, _ptr, _ptr],
    "rational_backward_f32": [_ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr],
    "rational_backward_f64": [_ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr],
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_build_lock = threading.Lock()
# (degrees, version) -> {(kind, dtype): the library's entry point}: one dict lookup per call
_libraries: dict[tuple, dict[tuple[str, torch.dtype], ctypes._CFuncPtr]] = {}


def compiler() -> str | None:
    """$CXX if it names an executable, else the first of c++, g++, clang++ on PATH."""
    return _find_compiler(os.environ.get("CXX"), os.environ.get("PATH"))


@cache
def _find_compiler(cxx: str | None, search_path: str | None) -> str | None:
    if cxx:
        return shutil.which(cxx, path=search_path)
    return next(filter(None, (shutil.which(c, path=search_path) for c in ("c++", "g++", "clang++"))), None)


def available() -> bool:
    return compiler() is not None


@cache
def _toolchain_id(cxx: str) -> str:
    """Compiler version and CPU features: a cached build is only reused where it was built for."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    cpu = platform.machine()
    try:
        features = ("flags", "Features")  # x86, Arm
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(features)]
        cpu += flags[0] if flags else ""
    except OSError:
        cpu += platform.processor()
    return version + cpu


def library(degrees: tuple[int, int], version: str) -> dict[tuple[str, torch.dtype], ctypes._CFuncPtr]:
    """The kernels of one (degrees, version), built or loaded on first use: {(kind, dtype): function}."""
    key = (degrees, version)
    lib = _libraries.get(key)
    if lib is None:
        with _build_lock:
            lib = _libraries.get(key) or _load(degrees, version)
            _libraries[key] = lib
    return lib


def _load(degrees: tuple[int, int], version: str) -> dict[tuple[str, torch.dtype], ctypes._CFuncPtr]:
    cxx = compiler()
    if cxx is None:
        raise KernelError(f"no C++ compiler found (CXX={os.environ.get('CXX', '')!r}); install g++ or set CXX, {TORCH_PATH_HINT}")
    source = kernel_source("rational_cpu.cpp")
    defines = compile_defines(degrees, version)
    try:
        toolchain = _toolchain_id(cxx)
    except OSError as e:  # a compiler that cannot be run (not executable, wrong architecture)
        raise KernelError(f"could not run the C++ compiler {cxx}: {e}; set CXX to a working one, {TORCH_PATH_HINT}") from e
    digest = hashlib.sha256("\0".join([source, *FLAGS, *defines, toolchain]).encode()).hexdigest()
    m, n = degrees
    path = cache_dir() / f"rational_cpu_{m}_{n}_{version}_{digest[:16]}.so"
    if not path.exists():
        _build(cxx, source, defines, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelError(f"could not load {path}: {e}; {TORCH_PATH_HINT}") from e
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return {(kind, dtype): getattr(lib, f"rational_{kind}_{suffix}") for kind in ("forward", "backward") for dtype, suffix in _SUFFIX.items()}


def _build(cxx: str, source: str, defines: tuple[str, ...], path: Path) -> None:
    try:
        _compile(cxx, source, defines, path)
    except OSError as e:  # an unwritable or broken cache directory
        raise KernelError(f"could not build the CPU rational kernel under {path.parent}: {e}; set RATSWEEP_CACHE_DIR to a writable folder, {TORCH_PATH_HINT}") from e


def _compile(cxx: str, source: str, defines: tuple[str, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, out = Path(tmp) / "rational_cpu.cpp", Path(tmp) / "rational_cpu.so"
        src.write_text(source)
        for threading_flags in THREADING_FLAGS:
            cmd = [cxx, *FLAGS, *threading_flags, *defines, str(src), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(out, path)  # atomic: concurrent builders never see a partial file
                return
        raise KernelError(f"{cxx} could not build the CPU rational kernel ({TORCH_PATH_HINT}):\n{proc.stderr[-4000:]}")


# The op's fixed cost decides small activations (an RL MLP's 256 x 256): each call below does only
# what its inputs require. The usual case (fp32 x, fp32 contiguous parameters) makes no tensor but
# the outputs and calls each kernel through one dict lookup (benchmarks/rational_kernels.py, per call).


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _coefficients(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t itself where the kernel can read it as it is (a parameter of the compute dtype), else a copy."""
    return t if t.dtype == dtype and t.is_contiguous() else t.detach().to(dtype).contiguous()


def _prepare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor):
    """x in its compute dtype (fp16/bf16 compute in fp32) and a dense layout, the coefficients in the
    same dtype (the parameters themselves where they already are)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return dense(_as(x, dtype)), _coefficients(numerator, dtype), _coefficients(denominator, dtype)


def forward(x: torch.Tensor, numerator, denominator, version: str) -> torch.Tensor:
    xc, a, b = _prepare(x, numerator, denominator)
    y = torch.empty_like(xc)
    library(degrees_of(a, b, version), version)["forward", xc.dtype](xc.data_ptr(), y.data_ptr(), xc.numel(), a.data_ptr(), b.data_ptr())
    return _as(y, x.dtype)


def backward(grad: torch.Tensor, x: torch.Tensor, numerator, denominator, version: str):
    """(dx, d numerator, d denominator): the kernel sums the coefficient gradients in double and
    writes them in the compute dtype."""
    xc, a, b = _prepare(x, numerator, denominator)
    g = like(_as(grad, xc.dtype), xc)
    dx = torch.empty_like(xc)
    grad_num, grad_den = torch.empty(a.numel(), dtype=xc.dtype), torch.empty(b.numel(), dtype=xc.dtype)
    library(degrees_of(a, b, version), version)["backward", xc.dtype](
        xc.data_ptr(), g.data_ptr(), dx.data_ptr(), xc.numel(), a.data_ptr(), b.data_ptr(), grad_num.data_ptr(), grad_den.data_ptr())
    return _as(dx, x.dtype), _as(grad_num, numerator.dtype), _as(grad_den, denominator.dtype)
