"""Offline-RL speed: updates/s of IQL and TD3+BC per activation, eager and compiled, evaluation wall
time, and (on a GPU) trials packed per GPU.

    python benchmarks/rl_updates.py                                   # on the GPU if there is one
    python benchmarks/rl_updates.py --compile --output benchmarks/results/rl_updates_cpu.md
    python benchmarks/rl_updates.py --compile --pack 8 --output benchmarks/results/rl_updates_h100.md   # on a GPU

Each row builds the real algorithm (`ratsweep.experiments.iql.IQL`, `td3bc.TD3BC`: the paper's
networks, optimizers and update) for HalfCheetah's shapes (17 observations, 6 actions) and times its
update on batches gathered from a random transition table on the device, as the experiment does.
Warm-up updates first; the device is synchronized before each clock read; each row is the best of
--rounds rounds. Ratios are against ReLU with the same algorithm and mode in the same run, and
against GELU. --compile adds compiled rows: every MLP compiled as the experiment's `compile: true`
does (offline_rl.compile_networks; on a GPU in mode "reduce-overhead", CUDA graphs with the rational
kernels inside), the first update's compile time reported apart. The evaluation row runs one real evaluation (20 episodes of
HalfCheetah-v5, 1000 steps, one batched policy forward per step) with an untrained actor.
--pack N starts N worker processes at once, each timing the same update loop, to show how trials
share one GPU. No dataset is read: fine for timing, and no score is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import device_name, versions  # benchmarks/ is the script folder: on sys.path

HERE = Path(__file__).resolve()
OBS, ACT = 17, 6  # HalfCheetah-v5
PAPER_UPDATES, EVALUATIONS = 300_000, 30
ACTIVATIONS = ("relu", "silu", "gelu", "rational")


def build(algorithm: str, activation: str, device: torch.device, batch_size: int):
    from ratsweep import config as cfg
    from ratsweep.experiments import iql, offline_rl, td3bc

    cls, config_class = (iql.IQL, iql.IQLConfig) if algorithm == "iql" else (td3bc.TD3BC, td3bc.TD3BCConfig)
    config = cfg.build(config_class, {"activation": activation, "batch_size": batch_size})
    generator = torch.Generator(device).manual_seed(0)
    algo = cls(config, OBS, ACT, device, generator)
    table = torch.randn(100_000, 2 * OBS + ACT + 2, device=device)
    table[:, OBS:OBS + ACT].clamp_(-1, 1)
    table[:, -1] = (table[:, -1] > 2).float()
    return algo, offline_rl.Transitions(table, OBS, ACT), generator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Row:
    """One algorithm x activation x mode: built, compiled if asked (the first update, timed apart)
    and warmed up; `run` times a round of updates and keeps the best."""

    def __init__(self, algorithm: str, activation: str, device: torch.device, warmup: int, batch_size: int, compiled: bool = False):
        from ratsweep.experiments import offline_rl

        self.algorithm, self.activation, self.mode = algorithm, activation, "compiled" if compiled else "eager"
        self.device, self.batch_size, self.step, self.best = device, batch_size, 0, float("inf")
        self.algo, self.transitions, self.generator = build(algorithm, activation, device, batch_size)
        self.compile_s = float("nan")
        if compiled:
            offline_rl.compile_networks(self.algo, mode="reduce-overhead" if device.type == "cuda" else None)
            started = time.perf_counter()
            self.update()  # compiles (a few graphs per network)
            sync(device)
            self.compile_s = time.perf_counter() - started
        for _ in range(warmup):
            self.update()
        sync(device)

    def update(self) -> None:
        self.step += 1
        self.algo.update(self.transitions.sample(self.batch_size, self.generator), self.step)

    def run(self, updates: int) -> None:
        started = time.perf_counter()
        for _ in range(updates):
            self.update()
        sync(self.device)
        self.best = min(self.best, (time.perf_counter() - started) / updates)

    def result(self) -> dict:
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else float("nan")
        return {"algorithm": self.algorithm, "activation": self.activation, "mode": self.mode, "updates_per_s": 1 / self.best,
                "ms_per_update": 1000 * self.best, "peak_mib": peak, "compile_s": self.compile_s}


def time_rows(rows: list[Row], updates: int, rounds: int) -> list[dict]:
    """Every row timed in turn, round after round (so drift of the machine hits them alike), each its best round."""
    for _ in range(rounds):
        for row in rows:
            row.run(max(1, updates // rounds))
    return [row.result() for row in rows]


def time_evaluation(device: torch.device, episodes: int) -> float | None:
    """One evaluation's wall time; None where Gymnasium is not installed (a bare GPU machine)."""
    import importlib.util

    if importlib.util.find_spec("gymnasium") is None:
        return None
    from ratsweep.experiments import offline_rl, td3bc

    actor = td3bc.Actor(OBS, ACT, torch.nn.ReLU, 256).to(device)
    data = offline_rl.OfflineDataset("random", np.zeros((2, OBS), np.float32), np.zeros((2, ACT), np.float32), np.zeros(2, np.float32),
                                     np.zeros((2, OBS), np.float32), np.zeros(2, np.float32), np.zeros(1), 1.0)
    evaluate = offline_rl.Evaluator("halfcheetah", episodes, data, device)
    try:
        started = time.perf_counter()
        with torch.no_grad():
            evaluate(actor, seed=0)
        return time.perf_counter() - started
    finally:
        evaluate.close()


def worker(args: argparse.Namespace) -> None:
    """One timing in this process; prints one JSON line (for --pack)."""
    device = torch.device(args.device)
    row = Row(args.algorithm, args.activation, device, args.warmup, args.batch_size)
    print(json.dumps(time_rows([row], args.updates, args.rounds)[0]), flush=True)


def packed(args: argparse.Namespace, algorithm: str, activation: str, count: int) -> list[dict]:
    """`count` worker processes timing the same loop at once on the device."""
    command = [sys.executable, str(HERE), "--worker", "--device", args.device, "--algorithm", algorithm, "--activation", activation,
               "--updates", str(args.updates), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=None, help="timed updates per row (default: 2000 on GPU, 1000 on CPU)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--pack", type=int, default=0, help="also time this many trials at once (GPU)")
    parser.add_argument("--algorithm", default="iql")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--algorithms", default="iql,td3bc", help="comma-separated (default: iql,td3bc)")
    parser.add_argument("--activations", default=",".join(ACTIVATIONS), help=f"comma-separated (default: {','.join(ACTIVATIONS)})")
    parser.add_argument("--compile", action="store_true", help="also time every row compiled (the experiments' compile: true)")
    parser.add_argument("--rounds", type=int, default=5, help="each row: the best of this many rounds, rows interleaved")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.updates = args.updates or (2000 if device.type == "cuda" else 1000)
    if args.worker:
        worker(args)
        return

    algorithms, activations = args.algorithms.split(","), args.activations.split(",")
    modes = (False, True) if args.compile else (False,)
    rows = time_rows([Row(a, act, device, args.warmup, args.batch_size, compiled) for a in algorithms for compiled in modes
                      for act in activations], args.updates, args.rounds)
    ms = {(r["algorithm"], r["mode"], r["activation"]): r["ms_per_update"] for r in rows}
    evaluation = time_evaluation(device, args.episodes)
    evaluations_min = EVALUATIONS * (evaluation or 0) / 60
    lines = [
        "# Offline-RL update benchmark", "",
        f"- date: {datetime.date.today()}; device: {device_name(device)}; torch threads: {torch.get_num_threads()}",
        f"- {versions()}",
        f"- command: python benchmarks/rl_updates.py {' '.join(sys.argv[1:])}",
        f"- batch {args.batch_size}, HalfCheetah shapes ({OBS} obs, {ACT} actions), 256-256 MLPs, best of {args.rounds} rounds of "
        f"{args.updates // args.rounds} updates after {args.warmup} warm-up; compiled: every MLP torch.compile'd "
        f"({'mode reduce-overhead: CUDA graphs' if device.type == 'cuda' else 'inductor, CPU'}), compile time apart", "",
        "| algorithm | mode | activation | updates / s | ms / update | vs ReLU | vs GELU | compile (s) | 300k updates (min) | "
        "trial incl. 30 evaluations (min) | peak memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        train_min = PAPER_UPDATES / r["updates_per_s"] / 60
        key = (r["algorithm"], r["mode"])
        relu, gelu = ms.get((*key, "relu")), ms.get((*key, "gelu"))
        ratio = lambda base: f"{r['ms_per_update'] / base:.2f}x" if base else "-"  # noqa: E731
        compile_s = f"{r['compile_s']:.1f}" if r["mode"] == "compiled" else "-"
        lines.append(f"| {r['algorithm']} | {r['mode']} | {r['activation']} | {r['updates_per_s']:,.0f} | {r['ms_per_update']:.3f} | "
                     f"{ratio(relu)} | {ratio(gelu)} | {compile_s} | {train_min:.1f} | {train_min + evaluations_min:.1f} | "
                     f"{r['peak_mib']:,.0f} |")
    if evaluation is None:
        lines += ["", "Evaluation: not timed (Gymnasium is not installed here); the trial column counts updates only."]
    else:
        lines += ["", f"Evaluation: {args.episodes} episodes of HalfCheetah-v5 (1000 steps, one batched forward per step): "
                      f"{evaluation:.2f} s; 30 per trial: {evaluations_min:.1f} min."]
    if args.pack:
        lines += ["", f"Packed: {args.pack} IQL trials at once on one device (each its own process)", "",
                  "| activation | alone (updates / s) | packed, each (updates / s) | packed / alone |", "|---|---:|---:|---:|"]
        for activation in ("relu", "rational"):
            alone = next(r for r in rows if r["algorithm"] == "iql" and r["activation"] == activation)["updates_per_s"]
            each = statistics.mean(r["updates_per_s"] for r in packed(args, "iql", activation, args.pack))
            lines.append(f"| {activation} | {alone:,.0f} | {each:,.0f} | {each / alone:.2f} |")
    if device.type != "cuda":
        lines += ["", "No CUDA device: the GPU targets (rational <= 1.15x ReLU, a 300k-update trial <= 10 min, evaluation "
                      "<= 10 % of it, 8 packed trials each >= 0.5x alone) need one. On a GPU:",
                  "`python benchmarks/rl_updates.py --compile --pack 8 --output benchmarks/results/rl_updates_h100.md`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
