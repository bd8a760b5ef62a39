"""The kernel sources build: CUDA with nvcc (where it exists, no GPU needed), CPU with the host
compiler, and both ship inside the wheel."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ratsweep.rational import cpu, cuda
from ratsweep.rational._native import cache_dir, compile_defines, find_kernels, kernel_source, kernels_dir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from kernel_static import cuda_tool  # noqa: E402  (finds the test extra's nvcc wheel too)

CU_FILES = sorted((ROOT / "kernels").glob("*.cu"))
CONFIGS = [((5, 4), "A"), ((1, 1), "B"), ((8, 8), "C"), ((3, 6), "A")]
nvcc = cuda_tool("nvcc")
needs_nvcc = pytest.mark.skipif(nvcc is None, reason="nvcc not found (PATH or the nvidia-cuda-nvcc wheel of the test extra)")


def test_there_are_cuda_kernels():
    assert [p.name for p in CU_FILES] == ["rational.cu"]


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])  # before and after sm_80's paired 16-bit conversions
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("degrees,version", CONFIGS)
def test_cuda_kernels_compile_to_ptx(source, degrees, version, arch, tmp_path):
    out = tmp_path / "k.ptx"
    cmd = [nvcc, "-std=c++17", "-ptx", f"-arch={arch}", "-DRS_INSTANTIATE", *compile_defines(degrees, version), str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    entries = re.findall(r"\.visible \.entry (\w+)", ptx)
    assert sum("rational_forward" in e for e in entries) == 5
    assert sum("rational_backward" in e for e in entries) == 5
    assert "rcp.approx.ftz.f32" in ptx and "div.rn.f32" not in ptx  # no IEEE division in the fp32 paths
    paired = ("cvt.rn.bf16x2.f32" in ptx, "cvt.rn.f16x2.f32" in ptx)
    assert paired == ((True, True) if arch == "sm_90" else (False, False))


@pytest.mark.parametrize("degrees,version", CONFIGS)
def test_cuda_kernels_compile_with_nvrtc_as_cupy_does(degrees, version):
    """The run-time build: NVRTC (as CuPy's RawModule calls it) compiles the source with no CUDA
    headers, with the backend's own options and name expressions for every dtype (no GPU needed)."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC's Python bindings come with torch's CUDA wheels")
    import torch

    names = [name for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for name in cuda.name_expressions(dtype).values()]
    (_, program) = nvrtc.nvrtcCreateProgram(kernel_source("rational.cu").encode(), b"rational.cu", 0, [], [])
    for name in names:
        assert nvrtc.nvrtcAddNameExpression(program, name.encode())[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    options = [o.encode() for o in (*cuda.compile_options(degrees, version), "--gpu-architecture=sm_90", "-ftz=true")]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode()
    lowered = [nvrtc.nvrtcGetLoweredName(program, name.encode())[1].decode() for name in names]
    assert len(set(lowered)) == 16 and all(re.fullmatch(r"_Z1[67]rational_(forward|backward)I\w+", n) for n in lowered)


@needs_nvcc
def test_forward_threads_have_two_16_byte_loads_in_flight(tmp_path):
    """With the launcher's setting, each forward thread issues its two vector loads before computing
    on either: a memory-bound kernel needs bytes in flight, and one load at a time leaves bandwidth unused."""
    out = tmp_path / "k.ptx"
    cmd = [nvcc, "-std=c++17", "-ptx", "-arch=sm_80", "-DRS_INSTANTIATE", f"-DRS_LOADS={cuda.FORWARD_LOADS}",
           str(ROOT / "kernels" / "rational.cu"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    forwards = re.findall(r"\.entry (_Z16rational_forward\w+)\((.*?)\n}\n", out.read_text(), re.S)
    wide = [(name, body) for name, body in forwards if "Li1E" not in name]
    assert len(wide) == 4
    for name, body in wide:
        main_loop = body[body.index("ld.global.nc.v"):]
        before_compute = re.split(r"\b(?:div|st\.global)", main_loop)[0]
        assert len(re.findall(r"ld\.global\.nc\.v\d", before_compute)) == cuda.FORWARD_LOADS == 2, name


def test_cpu_library_is_built_once_and_cached():
    lib = cpu.library((2, 3), "B")
    assert cpu.library((2, 3), "B") is lib
    built = list(cache_dir().glob("rational_cpu_2_3_B_*.so"))
    assert len(built) == 1


def test_wheel_ships_the_kernels_and_search_spaces_and_finds_them(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("ratsweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for source in ("rational.cu", "rational_cpu.cpp", "rational_math.h"):
        assert f"ratsweep/kernels/{source}" in names
    assert "ratsweep/search_spaces/quickstart.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert find_kernels(site / "ratsweep") == site / "ratsweep" / "kernels"  # installed: inside the package
    assert kernels_dir() == ROOT / "kernels"  # a checkout uses its own top-level sources
