"""Reading sweeps back from MLflow: the runs of a sweep, typed back into configs, and its best configs.

Everything here reads the tracking store (any MLflow URI), never Ray's local files, so it works
from any machine that reaches the store, long after the cluster is gone. ratsweep.report lays the
runs out as tables and plots.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from .. import config as cfg
from .. import registry
from ..errors import NotFound
from . import names, tracking
from .tracking import PLAN_FILE


@dataclass
class TrialRun:
    run_id: str
    status: str
    config: dict[str, Any]  # the experiment config keys that applied, values as in YAML
    extra: dict[str, Any]  # other params (num_params, ...)
    metrics: dict[str, float]  # latest value of each
    seconds: float | None
    sweep: str
    failure: str = ""  # why it FAILED (the ratsweep.failure tag): "diverged: ..." for a NaN/inf loss
    span: tuple[int, int] | None = None  # (start, end) in ms, when it ended
    node: str = ""  # the Ray node it ran on
    device: str = ""  # the device tag: a GPU's name, or "cpu (...)"
    name: str = ""  # the run's name: the trial's searched values (Space.trial_name)

    def outcome(self, metric: str) -> str:
        """finished (with a finite metric), diverged, failed (an error, or finished without the
        metric) or unfinished (running, killed, interrupted)."""
        if self.failure.startswith("diverged"):
            return "diverged"
        if self.status == "FINISHED":
            return "finished" if math.isfinite(self.metrics.get(metric, math.nan)) else "failed"
        return "failed" if self.status == "FAILED" else "unfinished"


@dataclass
class Sweep:
    name: str
    experiment: str
    metric: str
    mode: str
    runs: list[TrialRun]
    client: MlflowClient
    sweep_run_ids: list[str]  # newest first
    report: dict[str, Any]  # the newest sweep run's report layout from its search space ({} if none)
    plan: dict[str, Any] = field(default_factory=dict)  # the newest sweep run's tracking.sweep_plan ({} if none)
    superseded: int = 0  # runs left out: their config ran again later (load_sweep's all_runs)

    def ranked(self) -> list[TrialRun]:
        """Finished trials with the metric, best first."""
        done = [r for r in self.runs if r.status == "FINISHED" and math.isfinite(r.metrics.get(self.metric, math.nan))]
        return sorted(done, key=lambda r: r.metrics[self.metric], reverse=self.mode == "max")


def _typed(config_class: type | None, key: str, text: str):
    """A param back in its config field's type (lists for tuples, as YAML writes them); a param
    that is no config key (num_params), or of an experiment not installed here, as YAML reads it."""
    try:
        annotation = cfg.annotation_of(config_class, key)
    except (KeyError, TypeError):  # not a key of the config class, or no class
        return cfg.parse_text(text)
    value = cfg.from_text(annotation, text, key)
    return list(value) if isinstance(value, tuple) else value


def load_sweep(uri: str, name: str, include_smoke: bool = False, all_runs: bool = False) -> Sweep:
    """A sweep's trial runs: without `include_smoke`, none of its --smoke invocations; without
    `all_runs`, a config that ran more than once (the same sweep run again) counts once, by its latest
    finished run (its latest run if none finished)."""
    mlflow_client = tracking.reader(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        known = [e.name for e in mlflow_client.search_experiments() if names.EXPERIMENT_METRIC in e.tags]
        raise NotFound(f"{name}: {registry.unknown('sweep', name, known).args[0]} (in {uri})")
    tags = experiment.tags
    if names.EXPERIMENT_METRIC not in tags:
        raise NotFound(f"{name}: an MLflow experiment, but not a ratsweep sweep (it has no ratsweep.metric tag; in {uri})")
    try:
        config_class = registry.get_experiment(tags[names.EXPERIMENT_TYPE]).config
        keys = set(cfg.keys(config_class))
    except KeyError:  # the experiment's plugin is not installed here: every param is config
        config_class, keys = None, None
    runs, sweeps = [], []
    for run in _all_runs(mlflow_client, experiment.experiment_id):
        kind = run.data.tags.get(names.KIND)
        if kind == "sweep":
            sweeps.append(run)
            continue
        if kind != "trial":
            continue
        params = {k: _typed(config_class, k, v) for k, v in run.data.params.items()}
        end = run.info.end_time
        runs.append(
            TrialRun(
                run_id=run.info.run_id,
                status=run.info.status,
                config={k: v for k, v in params.items() if keys is None or k in keys},
                extra={k: v for k, v in params.items() if keys is not None and k not in keys},
                metrics=dict(run.data.metrics),
                seconds=(end - run.info.start_time) / 1000 if end and run.info.start_time else None,
                sweep=run.data.tags.get(names.PARENT, ""),
                failure=run.data.tags.get(names.FAILURE, ""),
                span=(run.info.start_time, end) if end and run.info.start_time else None,
                node=run.data.tags.get(names.NODE, ""),
                device=run.data.tags.get(names.DEVICE, ""),
                name=run.info.run_name or "",
            )
        )
    sweeps.sort(key=lambda r: r.info.start_time, reverse=True)
    if not include_smoke:
        smoke = {s.info.run_id for s in sweeps if s.data.tags.get(names.SMOKE, "").lower() == "true"}  # "True" before 0.x
        if runs and all(r.sweep in smoke for r in runs):
            raise NotFound(f"{name}: it has only --smoke runs so far; --include-smoke shows them")
        runs = [r for r in runs if r.sweep not in smoke]
        sweeps = [s for s in sweeps if s.info.run_id not in smoke]
    superseded = 0
    if not all_runs:
        latest = latest_per_config(runs)
        runs, superseded = latest, len(runs) - len(latest)
    report = json.loads(sweeps[0].data.tags.get(names.REPORT, "{}")) if sweeps else {}
    plan = _plan(mlflow_client, sweeps[0].info.run_id) if sweeps else {}
    return Sweep(name, tags.get(names.EXPERIMENT_TYPE, "?"), tags[names.EXPERIMENT_METRIC], tags[names.EXPERIMENT_MODE], runs,
                 mlflow_client, [r.info.run_id for r in sweeps], report, plan, superseded)


def latest_per_config(runs: list[TrialRun]) -> list[TrialRun]:
    """One run per distinct config: the latest finished one, else the latest."""
    def rank(run: TrialRun) -> tuple:
        return (run.status == "FINISHED", run.span[1] if run.span else 0)

    chosen: dict[str, TrialRun] = {}
    for run in runs:
        key = cfg.identity(run.config)
        if key not in chosen or rank(run) > rank(chosen[key]):
            chosen[key] = run
    return list(chosen.values())


def _plan(mlflow_client: MlflowClient, run_id: str) -> dict[str, Any]:
    """A sweep run's plan.json; {} for sweeps from before it was written, or where the artifact store
    cannot be read (the report then sorts by name and counts no missing trials)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if PLAN_FILE not in {a.path for a in mlflow_client.list_artifacts(run_id)}:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(mlflow_client.download_artifacts(run_id, PLAN_FILE, tmp)).read_text())
    except Exception:  # noqa: BLE001  (any store or decoding error: the plan is optional)
        return {}


def _all_runs(mlflow_client: MlflowClient, experiment_id: str):
    token = None
    while True:
        page = mlflow_client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def best(sweep: Sweep, top: int) -> list[dict[str, Any]]:
    ranked = sweep.ranked()
    if not ranked:
        raise NotFound(f"{sweep.name}: no finished trial has a {sweep.metric!r} metric yet")
    return [{"name": r.name, "run_id": r.run_id, "metric": sweep.metric, "value": r.metrics[sweep.metric], "config": r.config}
            for r in ranked[:top]]


def best_as_space(sweep: Sweep, entries: list[dict[str, Any]]) -> str:
    """A search-space file that reruns the best config; for --top K, one document (sweep) per config."""
    docs = [
        {"name": f"{sweep.name}_best", "experiment": sweep.experiment,
         "metric": {"name": sweep.metric, "mode": sweep.mode}, "config": entry["config"]}
        for entry in entries
    ]
    header = f"# the best {len(docs)} of {sweep.name} by {sweep.metric} ({sweep.mode}), from MLflow\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False)
