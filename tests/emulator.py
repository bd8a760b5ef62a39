"""Builds kernels/rational.cu for the CPU emulator (cuda_emulator.h + cuda_emulator_harness.cpp).

The source is rewritten for the host in two ways only: each inline-PTX statement becomes host code
that does what the PTX manual says (conversions with the same rounding and packing, the approximate
reciprocal with its handling of 0, infinities and subnormals), and each `__shared__` declaration
becomes a reference to the block's own copy (emu::block_shared), since C++ has no per-block storage
class. The emulator compiles the sm_90 code paths (__CUDA_ARCH__ 900)."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import torch

from ratsweep.rational import cuda

HERE = Path(__file__).resolve().parent
CXX = shutil.which("g++")
PTX_TO_HOST = {  # each inline-PTX statement of the source -> the host code that does what the PTX manual says
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));': "_Float16 h; std::memcpy(&h, &v.bits, 2); f = float(h);",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));': "const _Float16 h = _Float16(v); std::memcpy(&out.bits, &h, 2);",
    'asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));': "word = emu::cvt_rn_f16x2(hi, lo);",
    'asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(word) : "f"(hi), "f"(lo));': "word = emu::cvt_rn_bf16x2(hi, lo);",
    'asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));': "r = emu::rcp_approx_ftz(q);",
}
SHARED_DECLARATION = re.compile(r"__shared__\s+([\w:]+)\s+(\w+)((?:\[[^\]]+\])*)\s*;")
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
STORAGE_CODES = {cuda._STORAGE[dtype][0]: code for dtype, code in DTYPE_CODES.items()}  # by the kernels' type names


def host_source(source: str) -> str:
    for ptx, host in PTX_TO_HOST.items():
        assert ptx in source, f"the kernel's inline PTX changed: update PTX_TO_HOST ({ptx})"
        source = source.replace(ptx, host)
    source, count = SHARED_DECLARATION.subn(
        lambda m: f"auto& {m[2]} = emu::block_shared<{m[1]}{m[3]}, __LINE__>();", source
    )
    assert count and "__shared__" not in source, "a __shared__ declaration the rewrite does not understand"
    return source


def build(source: str, defines, folder: Path, *, program: bool = False, sanitize: bool = False) -> Path:
    """The emulated kernels as a shared library, or with `program` as the EMU_MAIN executable;
    `sanitize` builds with ThreadSanitizer."""
    folder.mkdir(parents=True, exist_ok=True)
    included = folder / "kernel.inc"
    included.write_text(host_source(source))
    target = folder / ("emulated" if program else "emulated.so")
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", "-w", f"-I{HERE}", f'-DRS_KERNEL_SOURCE="{included}"', *defines,
           str(HERE / "cuda_emulator_harness.cpp"), "-o", str(target)]
    cmd += ["-DEMU_MAIN"] if program else ["-shared", "-fPIC"]
    cmd += ["-fsanitize=thread", "-g"] if sanitize else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return target


def load(library: Path) -> ctypes.CDLL:
    dll = ctypes.CDLL(str(library))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    dll.emu_forward.argtypes = [i32, i32, i32, i32, p, p, i64, p, p]
    dll.emu_backward.argtypes = [i32, i32, i32, i32, p, p, p, i64, p, p, p, p, p, p]
    return dll
