"""The sweep engine's own cost: `ratsweep run` against a hand-written Ray Tune sweep of the same
experiment code on the same grid, one after the other in this invocation, each in a fresh process
with a local Ray of this machine's CPUs, two trials at a time, MLflow in a SQLite file.

    python benchmarks/engine_overhead.py --output benchmarks/results/engine_overhead_cpu.md
    python benchmarks/engine_overhead.py --trials 16 --rounds 1     # a quick look

The plain sweep is what a Ray Tune user writes: a function trainable that runs the experiment and
`tune.report`s its metrics, `reuse_actors=True`, and Ray's own `MLflowLoggerCallback` (params,
metrics, and the trial folder, with the experiment's plot, as artifacts). ratsweep does more per
trial: a checkpoint per report (--resume, retries), provenance and environment tags, the outbox
that holds MLflow writes while a store is down. Trials are `approx` fits of 20 steps with one report
and one plot each; nothing here is a model result.

Per contender and round: trials per minute over the sweep (Tuner.fit, and ratsweep's closing MLflow
writes) and end to end (process start to exit: imports, Ray start, MLflow store creation included).
The rounds alternate the contenders; the table gives the median of each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import device_name, versions  # benchmarks/ is the script folder: on sys.path

SPACE = """\
name: engine_overhead
experiment: approx
metric: {{name: max_abs_err, mode: min}}
config: {{steps: 20, report_every: 20, param_budget: 50}}
search_space:
  seed: {{grid: {seeds}}}
"""
CONCURRENT = 2


def ratsweep_sweep(folder: Path, trials: int) -> float:
    """`ratsweep run`'s own code path (cli.run) in this process; the sweep's wall time."""
    from ratsweep import cli  # noqa: PLC0415
    from ratsweep.sweep import runner  # noqa: PLC0415

    (folder / "space.yaml").write_text(SPACE.format(seeds=list(range(trials))))
    walls = []
    run_sweep = runner.run_sweep

    def timed(space, options):
        outcome = run_sweep(space, options)
        walls.append(outcome.wall_s)
        return outcome

    runner.run_sweep = timed
    try:
        cli.main(["run", str(folder / "space.yaml"), "--max-concurrent", str(CONCURRENT), "--tracking-uri",
                  f"sqlite:///{folder / 'mlruns.db'}", "--storage", str(folder / "results")])
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"ratsweep run exited {e.code}") from None
    return walls[0]


def plain_sweep(folder: Path, trials: int) -> float:
    """The same experiment in a plain Tune sweep: MLflowLoggerCallback, reuse_actors=True."""
    import ray  # noqa: PLC0415
    from ray import tune  # noqa: PLC0415
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: PLC0415

    from ratsweep import config as cfg  # noqa: PLC0415
    from ratsweep import registry  # noqa: PLC0415

    def trainable(config):
        from pathlib import Path  # noqa: PLC0415  (in the worker: this script is not importable there)

        experiment = registry.get_experiment("approx")

        class Session:  # the experiment's Session protocol, straight onto Tune
            smoke, data_dir, restored = False, Path("."), None
            artifact_dir = Path(tune.get_context().get_trial_dir())

            def report(self, metrics, state=None):
                tune.report(dict(metrics))

            def log_params(self, **params):
                pass

        experiment.run(cfg.build(experiment.config, {"steps": 20, "report_every": 20, "param_budget": 50, **config}), Session())

    ray.init(include_dashboard=False, logging_level="WARNING")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"seed": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(metric="max_abs_err", mode="min", max_concurrent_trials=CONCURRENT, reuse_actors=True),
        run_config=tune.RunConfig(
            name="engine_overhead", storage_path=str(folder / "results"), verbose=1,
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{folder / 'mlruns.db'}", experiment_name="engine_overhead",
                                            save_artifact=True)],
        ),
    )
    started = time.monotonic()
    results = tuner.fit()
    wall = time.monotonic() - started
    if results.num_errors or len(results) != trials:
        raise RuntimeError(f"plain Tune: {results.num_errors} errors in {len(results)} trials")
    return wall


CONTENDERS = {"ratsweep run": ratsweep_sweep, "plain Ray Tune + MLflowLoggerCallback": plain_sweep}


def one(name: str, trials: int) -> dict:
    """One contender in a fresh process (its own Ray, its own store): its sweep and end-to-end times."""
    with tempfile.TemporaryDirectory(prefix="rs-engine-") as tmp:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--trials", str(trials), "--folder", tmp],
                              capture_output=True, text=True, cwd=tmp)
        end_to_end = time.monotonic() - started
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    wall = json.loads(proc.stdout.strip().splitlines()[-1])["wall_s"]
    return {"per_min": 60 * trials / wall, "per_min_end_to_end": 60 * trials / end_to_end, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", help="write the results table (markdown) here too")
    parser.add_argument("--one", choices=list(CONTENDERS), help=argparse.SUPPRESS)  # internal: run one contender here
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        wall = CONTENDERS[args.one](Path(args.folder), args.trials)
        print(json.dumps({"wall_s": wall}))
        return

    rows = {name: [] for name in CONTENDERS}
    for round_ in range(args.rounds):
        order = list(CONTENDERS) if round_ % 2 == 0 else list(reversed(CONTENDERS))
        for name in order:
            rows[name].append(one(name, args.trials))
            print(f"round {round_ + 1}: {name}: {rows[name][-1]['per_min']:.0f} trials/min", file=sys.stderr, flush=True)
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rows.items()}
    plain = median["plain Ray Tune + MLflowLoggerCallback"]
    lines = [
        "# Sweep engine overhead: ratsweep run against a plain Ray Tune sweep",
        "",
        f"{datetime.date.today()} · {device_name()} · {versions()} · "
        f"`python benchmarks/engine_overhead.py --trials {args.trials} --rounds {args.rounds}`",
        "",
        f"{args.trials} `approx` trials (20 steps, one report, one plot) on a local Ray, {CONCURRENT} at a time, MLflow in "
        f"a SQLite file; each contender in a fresh process, rounds alternating, the median of {args.rounds} rounds. "
        "Target: ratsweep >= 1.0x the plain sweep's trials/min.",
        "",
        "| sweep | trials/min (sweep) | vs plain | trials/min (end to end) | vs plain | each round's trials/min (sweep) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in median.items():
        each = ", ".join(f"{r['per_min']:.0f}" for r in rows[name])
        lines.append(f"| {name} | {m['per_min']:.0f} | {m['per_min'] / plain['per_min']:.2f}x | {m['per_min_end_to_end']:.0f} | "
                     f"{m['per_min_end_to_end'] / plain['per_min_end_to_end']:.2f}x | {each} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
