"""Rational activation kernels vs GELU and vs the torch reference path, on one tensor, in one run.

    python benchmarks/rational_kernels.py                      # every device here, default sizes
    python benchmarks/rational_kernels.py --device cuda --output benchmarks/results/rational_kernels_h100.md

For each device x dtype x size: forward and backward time (median over rounds of back-to-back
calls; on a GPU between CUDA events, so host latency is not in it), effective GB/s (forward moves
x and y, backward x, dy and dx) and its fraction of a plain copy's measured in the same run, the
ratio to GELU and to the reference path on the same tensor, bytes autograd saves for backward, and
(CUDA) peak memory of forward+backward. Then the per-call cost of small
tensors (an RL MLP's activations), where the host's launch path, not the kernel, sets the time:
microseconds per forward+backward over back-to-back calls, against GELU's. Not a test: it asserts
nothing, it prints the targets next to the numbers.

On CPU the process re-executes itself with glibc's mmap/trim thresholds fixed, so freed activations
stay mapped: otherwise every 16 MB output is page-faulted in afresh at random (~4 ms here), for GELU
and rational alike, and the comparison measures the kernel's luck with the allocator.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

_STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in _STEADY_MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_STEADY_MALLOC})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ratsweep.rational import Rational, functional  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMALL_SIZES = (256 * 16, 256 * 256)  # an RL MLP's activations at batch 16 and 256


SLEEP_CYCLES_PER_CALL = 100_000  # GPU clock cycles (~50 µs) of head start per queued call


class Timer:
    """Median over rounds of the time per call of `calls` back-to-back calls, in ms. On a GPU, each round
    starts with the GPU spinning (torch.cuda._sleep) while the host queues the round's calls between two
    CUDA events, so the events time the kernels alone, not the host's launch latency, even for tensors
    whose kernels take a few microseconds (the per-call table below measures that latency); perf_counter
    on the CPU."""

    def __init__(self, device: torch.device, rounds: int, calls: int):
        self.device, self.rounds, self.calls = device, rounds, calls

    def __call__(self, fn, rounds: int | None = None) -> float:
        cuda = self.device.type == "cuda"
        for _ in range(3):
            fn()
        times = []
        for _ in range(rounds or self.rounds):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda._sleep(SLEEP_CYCLES_PER_CALL * self.calls)
                start.record()
                for _ in range(self.calls):
                    fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / self.calls)
            else:
                t0 = time.perf_counter()
                for _ in range(self.calls):
                    fn()
                times.append((time.perf_counter() - t0) * 1e3 / self.calls)
        return statistics.median(times)


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward when fn(x) runs."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x)
    return sum(t.numel() * t.element_size() for t in saved)


REFERENCE = "rational[torch]"


def contenders(device: torch.device, degrees, version: str) -> dict:
    """GELU, the rational activation on this device's compiled backend, and on the reference path."""
    compiled = functional.resolve_backend("auto", device)
    return {
        "gelu": F.gelu,
        f"rational[{compiled}]": Rational(degrees, "gelu", version, backend=compiled).to(device),
        REFERENCE: Rational(degrees, "gelu", version, backend="torch").to(device),
    }


def grad_inputs(fn, x: torch.Tensor) -> list[torch.Tensor]:
    """What backward differentiates: x and the module's parameters (the coefficients)."""
    return [x, *getattr(fn, "parameters", lambda: [])()]


def measure(name: str, fn, x: torch.Tensor, dy: torch.Tensor, timer: Timer, rounds: int | None = None) -> dict:
    inputs = grad_inputs(fn, x)

    def forward():
        with torch.no_grad():
            fn(x)

    y = fn(x)

    def backward():
        torch.autograd.grad(y, inputs, dy, retain_graph=True)

    def both():
        torch.autograd.grad(fn(x), inputs, dy)

    row = {"name": name, "fwd": timer(forward, rounds), "bwd": timer(backward, rounds), "fwd_bwd": timer(both, rounds)}
    row["saved"] = saved_bytes(fn, x)
    if x.is_cuda:
        del y
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        both()
        torch.cuda.synchronize()
        row["peak"] = torch.cuda.max_memory_allocated() - base
    return row


def run_case(device: torch.device, dtype: torch.dtype, n: int, degrees, version: str, timer: Timer) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, device=device, generator=g).to(dtype).requires_grad_()
    dy = torch.randn(n, device=device, generator=g).to(dtype)
    rows = [measure(name, fn, x, dy, timer, rounds=max(3, timer.rounds // 5) if name == REFERENCE else None)
            for name, fn in contenders(device, degrees, version).items()]
    elem = x.element_size()
    out = torch.empty_like(x)
    copy_ms = timer(lambda: out.copy_(x.detach()))  # the bandwidth baseline: read n, write n
    copy_gbs = 2 * n * elem / copy_ms / 1e6
    gelu, ref = rows[0], rows[2]
    for row in rows:
        row["fwd_gbs"] = 2 * n * elem / row["fwd"] / 1e6
        row["bwd_gbs"] = 3 * n * elem / row["bwd"] / 1e6
        row["vs_gelu"] = row["fwd_bwd"] / gelu["fwd_bwd"]
        row["ref_speedup"] = ref["fwd_bwd"] / row["fwd_bwd"]
        row["copy_gbs"] = copy_gbs
    return rows


def per_call(device: torch.device, dtype: torch.dtype, n: int, degrees, version: str, calls: int = 300, rounds: int = 7) -> list[dict]:
    """Microseconds per forward+backward over `calls` back-to-back calls, synchronized once at the end:
    the rate a training loop issues them at when the device is not the bottleneck (on a GPU: the
    host-side cost, CuPy's launch and plan lookup for the rational). Best of `rounds`, the
    contenders taking turns each round so the machine's drift hits them alike."""
    x = torch.randn(n, device=device).to(dtype).requires_grad_()
    dy = torch.randn(n, device=device).to(dtype)
    fns = contenders(device, degrees, version)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            inputs = grad_inputs(fn, x)
            for _ in range(10):
                torch.autograd.grad(fn(x), inputs, dy)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.autograd.grad(fn(x), inputs, dy)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    gelu = best["gelu"]
    return [{"name": name, "us": us, "vs_gelu": us / gelu, "over_gelu": us - gelu} for name, us in best.items()]


def per_call_table(device: torch.device, dtype_name: str, results: dict[int, list[dict]]) -> str:
    sizes = list(results)
    cost = "host-side cost" if device.type == "cuda" else "fwd+bwd"
    head = f"### {device.type} {dtype_name}: per-call cost of small tensors ({cost}, back to back, best of rounds, µs per call)"
    lines = [head, "", "| kernel | " + " | ".join(f"n={n:,}: µs (x GELU, + µs)" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    names = [row["name"] for row in results[sizes[0]]]
    for i, name in enumerate(names):
        cells = [f"{results[n][i]['us']:.1f} ({results[n][i]['vs_gelu']:.2f}, {results[n][i]['over_gelu']:+.1f})" for n in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def table(device: torch.device, dtype_name: str, n: int, rows: list[dict]) -> str:
    copy = rows[0]["copy_gbs"]
    head = f"### {device.type} {dtype_name} n={n:,} (copy: {copy:.0f} GB/s)"
    cols = "| kernel | fwd ms | bwd ms | fwd+bwd ms | fwd GB/s | bwd GB/s | x GELU (fwd+bwd) | faster than reference | saved for bwd | peak fwd+bwd |"
    lines = [head, "", cols, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gbs = lambda v: f"{v:.0f} ({100 * v / copy:.0f} %)"  # noqa: E731
        lines.append(
            f"| {r['name']} | {r['fwd']:.3f} | {r['bwd']:.3f} | {r['fwd_bwd']:.3f} | {gbs(r['fwd_gbs'])} | {gbs(r['bwd_gbs'])} "
            f"| {r['vs_gelu']:.2f} | {r['ref_speedup']:.1f}x | {fmt_bytes(r['saved'])} | {fmt_bytes(r.get('peak'))} |"
        )
    return "\n".join(lines)


def environment() -> str:
    import ratsweep

    lines = [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"ratsweep {ratsweep.__version__}, torch {torch.__version__}, python {platform.python_version()}",
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
    ]
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if model:
            lines[-1] = f"cpu: {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    except OSError:
        pass
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
        try:
            import cupy

            lines.append(f"cupy {cupy.__version__}")
        except ImportError:
            lines.append("cupy: not installed")
    return "\n".join(f"- {line}" for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    parser.add_argument("--dtype", choices=list(DTYPES), action="append", help="default: fp32 on cpu; fp32, bf16, fp16 on cuda")
    parser.add_argument("--size", type=int, action="append", help="elements; default 4M on cpu, 1M, 8M and 64M on cuda")
    parser.add_argument("--degrees", default="5,4")
    parser.add_argument("--version", default="A")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per measurement (the median is reported)")
    parser.add_argument("--calls", type=int, help="back-to-back calls per round; default 20 on cuda, 3 on cpu")
    parser.add_argument("--output", help="also write the report (markdown) here")
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    degrees = tuple(int(d) for d in args.degrees.split(","))
    sections = ["# Rational activation kernels", "", environment(), f"- command: python benchmarks/rational_kernels.py {' '.join(sys.argv[1:])}",
                f"- degrees {degrees}, version {args.version}; each time: median over {args.rounds} rounds of back-to-back calls "
                "(CUDA events around each round on a GPU)", ""]
    for name in devices:
        device = torch.device(name)
        timer = Timer(device, args.rounds, args.calls or (20 if name == "cuda" else 3))
        dtypes = args.dtype or (["fp32"] if name == "cpu" else ["fp32", "bf16", "fp16"])
        sizes = args.size or ([4 << 20] if name == "cpu" else [1 << 20, 8 << 20, 64 << 20])
        for dtype_name in dtypes:
            for n in sizes:
                rows = run_case(device, DTYPES[dtype_name], n, degrees, args.version, timer)
                sections += [table(device, dtype_name, n, rows), ""]
                print(sections[-2] + "\n", flush=True)
            small = {n: per_call(device, DTYPES[dtype_name], n, degrees, args.version) for n in SMALL_SIZES}
            sections += [per_call_table(device, dtype_name, small), ""]
            print(sections[-2] + "\n", flush=True)
    sections += [
        "Targets: CPU (fp32, 4M) fwd+bwd <= 1.5x GELU and >= 5x faster than the reference; "
        "GPU (64M, fp32 and bf16) fwd+bwd <= 1.2x GELU, >= 10x faster than the reference, "
        "forward >= 80 % and backward >= 75 % of device copy bandwidth, one saved activation-sized tensor. "
        "Small tensors (fp32 CPU): <= +10 µs over GELU at 4,096 elements and <= 1.05x GELU at 65,536; on a GPU the "
        "per-call cost is the host's launch path: one launch forward and one backward (GELU's count) is what the CUDA "
        "path is built for.",
    ]
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(sections) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
