"""Running the `ratsweep` CLI as a user would, and reading what it left in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def ratsweep(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300, check: bool = True):
    proc = subprocess.run(
        [sys.executable, "-m", "ratsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ratsweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def mlflow_client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")


def trial_runs(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("ratsweep.kind") == "trial"], [r for r in runs if r.data.tags.get("ratsweep.kind") == "sweep"]


def artifacts(client: MlflowClient, run) -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id)}


def reported_steps(sweep: Path, metric: str) -> dict[str, list[int]]:
    """Tune's own record of each trial's reports in a sweep's folder: the MLflow step of each
    result.json row that carries `metric` (the experiment's own step, names.STEP_KEYS, else Tune's
    iteration), sorted, a step repeated if the trial reported it twice."""
    from ratsweep.sweep.names import STEP_KEYS

    steps = {}
    for result in sweep.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        steps[rows[0]["trial_id"]] = sorted(next((int(row[k]) for k in STEP_KEYS if k in row), row["training_iteration"])
                                            for row in rows if metric in row)
    return steps
