"""Sweep throughput under load: a sweep of many tiny trials submitted to a local two-node Ray cluster
(a head and a worker, 1 CPU each, as tests/test_cluster.py starts them), tracked by `ratsweep server`
on PostgreSQL, then the same sweep tracked in a SQLite file (the default store).

    python benchmarks/sweep_load.py --output benchmarks/results/sweep_load_cpu.md
    python benchmarks/sweep_load.py --trials 50          # a quick look

Per store: trials per minute over the sweep's own wall time (as its summary prints it) and end to
end (from `ratsweep submit` until the job has ended, job start-up included); the driver's MLflow
time per trial (every write of runs, params, metrics, tags, artifacts and statuses, timed where it
is made: the outbox's sender thread) and the share of the sweep's wall time that the sweep itself
waited on MLflow (both from the summary's "MLflow cost" line); each trial's own
run time (Tune's time_total_s: the trainable's work) and the scheduling overhead per trial, the
wall time the sweep's slots spent per trial beyond that. Trials are `approx` fits of 20 steps with
one report; nothing here is a model result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import device_name, versions  # benchmarks/ is the script folder: on sys.path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "tests"))
from services import RayCluster, team  # noqa: E402  (the tests' real services)

SPACE = """\
name: {name}
experiment: approx
metric: {{name: max_abs_err, mode: min}}
config: {{steps: 20, report_every: 20, param_budget: 50}}
search_space:
  seed: {{grid: {seeds}}}
"""
SLOTS = 2  # the head's and the worker's CPU


def run(cluster: RayCluster, folder: Path, name: str, tracking_uri: str, trials: int) -> dict:
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(SPACE.format(name=name, seeds=list(range(trials))))
    started = time.monotonic()
    submitted = subprocess.run([sys.executable, "-m", "ratsweep", "submit", "space.yaml", "--address", cluster.address,
                                "--tracking-uri", tracking_uri, "--storage", str(folder / "results")],
                               cwd=folder, env=cluster.env, capture_output=True, text=True, check=True)
    logs, _ = cluster.wait_for_job(submitted.stdout.split()[2], timeout=3600)
    end_to_end = time.monotonic() - started
    if f"{name}: {trials} finished" not in logs:
        raise RuntimeError(f"the {name} sweep did not finish all trials:\n{logs[-3000:]}")
    cost = re.search(r"MLflow cost:\s+(\d+) writes took ([\d.]+) s .*; the sweep waited ([\d.]+) s for them, [\d.]+ % of its (\d+) s", logs)
    writes, mlflow_s, waited_s, wall_s = int(cost[1]), float(cost[2]), float(cost[3]), float(cost[4])
    own = []
    for result in (folder / "results").glob(f"{name}-*/*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        own.append(rows[-1]["time_total_s"])
    assert len(own) == trials, len(own)
    return {
        "trials": trials, "wall_s": wall_s, "end_to_end_s": end_to_end, "per_min": 60 * trials / wall_s,
        "per_min_end_to_end": 60 * trials / end_to_end, "writes": writes, "mlflow_per_trial_ms": 1000 * mlflow_s / trials,
        "sender_share": 100 * mlflow_s / wall_s, "waited_share": 100 * waited_s / wall_s,
        "own_s": statistics.mean(own), "overhead_s": wall_s * SLOTS / trials - statistics.mean(own),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--output", help="write the results table (markdown) here too")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="rs-load-"))
    rows = {}
    with team(folder) as (cluster, server):
        rows["PostgreSQL (ratsweep server)"] = run(cluster, folder / "pg", "load_pg", server.uri, args.trials)
        rows["SQLite file (default)"] = run(cluster, folder / "sqlite", "load_sqlite", f"sqlite:///{folder / 'mlruns.db'}", args.trials)

    lines = [
        "# Sweep load: tiny trials on a local two-node Ray cluster",
        "",
        f"{datetime.date.today()} · {device_name()} · {versions()} · `python benchmarks/sweep_load.py --trials {args.trials}`",
        "",
        f"{args.trials} `approx` trials (20 steps, one report and checkpoint, a plot artifact each) submitted with "
        f"`ratsweep submit` to a head and a worker node of 1 CPU each ({SLOTS} trials at a time). "
        "Targets (PostgreSQL): >= 150 trials/min, the sweep waiting on MLflow <= 5 % of its wall time, <= 150 ms of MLflow writes per trial.",
        "",
        "| store | trials/min (sweep) | trials/min (submit to end) | MLflow writes | MLflow ms/trial (sender thread) | "
        "sender busy, % of wall | sweep waited on MLflow, % of wall | trial's own s | scheduling overhead s/trial |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for store, r in rows.items():
        lines.append(f"| {store} | {r['per_min']:.0f} | {r['per_min_end_to_end']:.0f} | {r['writes']} | {r['mlflow_per_trial_ms']:.0f} | "
                     f"{r['sender_share']:.1f} | {r['waited_share']:.1f} | {r['own_s']:.2f} | {r['overhead_s']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
