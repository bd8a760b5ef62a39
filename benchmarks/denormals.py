"""Subnormal floats on the CPU: the approx experiment with and without flushing them to zero.

    python benchmarks/denormals.py [--steps 600] [--output benchmarks/results/denormals_cpu.md]

Training that drives weights, gradients or Adam's second moments towards zero makes x86 CPUs take a
slow microcode path for every subnormal operand. `ratsweep run` therefore flushes them in CPU trials
(`torch.set_flush_denormal(True)`; `--keep-denormals` turns that off). Each row runs the same
trial (same seed, same steps) both ways in this process and prints the ratio; the fit errors show
what flushing changes in the result (values below ~1e-38 become 0). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ratsweep import config
from ratsweep.experiments import approx
from ratsweep.experiments.common import LocalSession


def timed(values: dict, flush: bool) -> tuple[float, dict]:
    torch.set_flush_denormal(flush)
    started = time.perf_counter()
    final = approx.run(config.build(approx.ApproxConfig, values), LocalSession())
    return time.perf_counter() - started, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--targets", nargs="+", default=list(approx.TARGET_FUNCTIONS))
    parser.add_argument("--activations", nargs="+", default=["relu", "rational"])
    parser.add_argument("--output", help="also write the results as Markdown here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a 1-CPU trial runs
    lines = [
        "# Subnormal floats: approx trials with and without flushing to zero",
        "",
        f"- date: {datetime.date.today()}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}",
        f"- each row: one approx trial ({args.steps} steps, default config otherwise), run kept then flushed",
        "",
        "| target | activation | kept (s) | flushed (s) | kept / flushed | mse kept | mse flushed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for target in args.targets:
        for activation in args.activations:
            values = {"target": target, "activation": activation, "steps": args.steps, "report_every": args.steps}
            kept, kept_final = timed(values, flush=False)
            flushed, flushed_final = timed(values, flush=True)
            row = (f"| {target} | {activation} | {kept:.2f} | {flushed:.2f} | {kept / flushed:.2f}x | "
                   f"{kept_final['mse']:.2e} | {flushed_final['mse']:.2e} |")
            lines.append(row)
            print(row, flush=True)
    torch.set_flush_denormal(False)
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
