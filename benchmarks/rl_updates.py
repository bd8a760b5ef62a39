"""Offline-RL speed: updates/s of IQL and TD3+BC per activation, evaluation wall time, and (on a GPU)
trials packed per GPU.

    python benchmarks/rl_updates.py                                   # on the GPU if there is one
    python benchmarks/rl_updates.py --output benchmarks/results/rl_updates_cpu.md
    python benchmarks/rl_updates.py --pack 8 --output benchmarks/results/rl_updates_h100.md   # on a GPU

Each row builds the real algorithm (`ratsweep.experiments.iql.IQL`, `td3bc.TD3BC`: the paper's
networks, optimizers and update) for HalfCheetah's shapes (17 observations, 6 actions) and times its
update on batches gathered from a random transition table on the device, as the experiment does.
Warm-up updates first; the device is synchronized before each clock read. Ratios are against ReLU
with the same algorithm in the same run. The evaluation row runs one real evaluation (20 episodes of
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


def time_updates(algorithm: str, activation: str, device: torch.device, updates: int, warmup: int, batch_size: int) -> dict:
    algo, transitions, generator = build(algorithm, activation, device, batch_size)
    for step in range(1, warmup + 1):
        algo.update(transitions.sample(batch_size, generator), step)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for step in range(warmup + 1, warmup + updates + 1):
        algo.update(transitions.sample(batch_size, generator), step)
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"algorithm": algorithm, "activation": activation, "updates_per_s": updates / seconds,
            "ms_per_update": 1000 * seconds / updates, "peak_mib": peak}


def time_evaluation(device: torch.device, episodes: int) -> float:
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
    print(json.dumps(time_updates(args.algorithm, args.activation, device, args.updates, args.warmup, args.batch_size)), flush=True)


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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.updates = args.updates or (2000 if device.type == "cuda" else 1000)
    if args.worker:
        worker(args)
        return

    rows = [time_updates(a, act, device, args.updates, args.warmup, args.batch_size) for a in ("iql", "td3bc") for act in ACTIVATIONS]
    relu = {r["algorithm"]: r["ms_per_update"] for r in rows if r["activation"] == "relu"}
    evaluation = time_evaluation(device, args.episodes)
    lines = [
        "# Offline-RL update benchmark", "",
        f"- date: {datetime.date.today()}; device: {device_name(device)}; torch threads: {torch.get_num_threads()}",
        f"- {versions()}",
        f"- command: python benchmarks/rl_updates.py {' '.join(sys.argv[1:])}",
        f"- batch {args.batch_size}, HalfCheetah shapes ({OBS} obs, {ACT} actions), 256-256 MLPs, {args.updates} timed updates "
        f"after {args.warmup} warm-up, eager PyTorch (no graph capture)", "",
        "| algorithm | activation | updates / s | ms / update | vs ReLU | 300k updates (min) | trial incl. 30 evaluations (min) | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        train_min = PAPER_UPDATES / r["updates_per_s"] / 60
        lines.append(f"| {r['algorithm']} | {r['activation']} | {r['updates_per_s']:,.0f} | {r['ms_per_update']:.3f} | "
                     f"{r['ms_per_update'] / relu[r['algorithm']]:.2f}x | {train_min:.1f} | {train_min + EVALUATIONS * evaluation / 60:.1f} | "
                     f"{r['peak_mib']:,.0f} |")
    lines += ["", f"Evaluation: {args.episodes} episodes of HalfCheetah-v5 (1000 steps, one batched forward per step): "
                  f"{evaluation:.2f} s; 30 per trial: {EVALUATIONS * evaluation / 60:.1f} min."]
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
                  "`python benchmarks/rl_updates.py --pack 8 --output benchmarks/results/rl_updates_h100.md`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
