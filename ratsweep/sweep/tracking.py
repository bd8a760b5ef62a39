"""MLflow: one parent run per sweep invocation, one child run per trial, all written by the driver.

Logging from the driver (a Tune callback) rather than from the trials means one writer to the
tracking store (a local SQLite file is safe), workers that never need to reach the tracking server,
and a run per trial found again by its Tune trial id, so a retried, resumed or restored trial keeps
its run instead of opening a second one.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from ray.tune import Callback

from .. import config as cfg
from .. import registry
from . import names
from .outbox import Outbox, reason, redacted
from ..errors import UserError
from .space import Space
from .trainable import ARTIFACTS, RESULT_KEY, TAGS_ATTRIBUTE

# MLflow prints each ended run's URL, credentials of the tracking URI included, into the driver's
# output (and job logs); ratsweep's summary says where the runs are instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
PLAN_FILE = "plan.json"  # on a sweep run: what it set out to run (sweep_plan), for `report`
# Bookkeeping Tune adds to every result: not metrics of the experiment.
_TUNE_KEYS = {
    "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
    "iterations_since_restore", "pid", "done", "timesteps_total", "episodes_total", "timesteps_since_restore",
    "checkpoint_dir_name", "should_checkpoint",
}


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI (relative for sqlite:///x, absolute for sqlite:////x)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else ./mlruns.db as an absolute SQLite URI."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = sqlite_file(uri)
    return uri if db is None or db.is_absolute() else f"sqlite:///{os.path.abspath(db)}"


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # MLflow's own: its client sends them
_warned_plain: set[str] = set()


def refusal(error: Exception, uri: str) -> UserError | None:
    """A one-line UserError for a server refusing who asks (401: no or wrong credentials, 403: no
    permission), naming the variables that say who asks; None for any other error."""
    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    variables = " and ".join(CREDENTIALS)
    if status == 401:
        return UserError(f"--tracking-uri: {redacted(uri)} refused the credentials (401 Unauthorized): set {variables} "
                         "(MLflow's own variables) to an account of that server")
    if status == 403:
        endpoint = re.search(r"endpoint (\S+)", str(error))
        return UserError(f"--tracking-uri: {redacted(uri)} refused {os.environ.get(CREDENTIALS[0], 'this user')!r} "
                         f"(403 Forbidden{' on ' + endpoint.group(1) if endpoint else ''}): ask the server's admin for "
                         f"permission, or sign in as another user ({variables})")
    return None


def warn_if_credentials_travel_plain(uri: str) -> None:
    """Once per server: a warning when credentials would go to a plain-HTTP server off this machine."""
    parts = urllib.parse.urlsplit(uri)
    credentials = parts.password is not None or any(os.environ.get(v) for v in (*CREDENTIALS, "MLFLOW_TRACKING_TOKEN"))
    if parts.scheme == "http" and credentials and parts.hostname not in ("127.0.0.1", "localhost", "::1") \
            and parts.hostname not in _warned_plain:
        _warned_plain.add(parts.hostname)
        print(f"ratsweep: warning: credentials go to http://{parts.hostname} unencrypted; serve MLflow behind TLS and use "
              "https:// (docs/team.md)", file=sys.stderr, flush=True)


def _probe(uri: str) -> None:
    """One query of the store (one try, outbox.WRITE_TIMEOUT_S at most), or a one-line UserError with MLflow's reason."""
    warn_if_credentials_travel_plain(uri)
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as e:  # MLflow raises several types for bad schemes, unreachable servers, auth, bad files
        refused = refusal(e, uri)
        if refused is not None:
            raise refused from None
        raise UserError(f"--tracking-uri: cannot use MLflow store {redacted(uri)!r}: {reason(e).replace(uri, redacted(uri))}") from None


def check_not_foreign(uri: str) -> None:
    """MLflow adds its tables to any SQLite file it is pointed at: refuse one that holds other tables
    and none of MLflow's (someone else's database, a mistyped path)."""
    db = sqlite_file(uri)
    if db is None or not db.is_file() or db.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise UserError(f"--tracking-uri: {uri}: expected an MLflow SQLite store or a new file, {db} is not a SQLite "
                        f"database ({e})") from None
    if tables and "experiments" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserError(f"--tracking-uri: {uri}: expected an MLflow SQLite store or a new file, {db} is another "
                        f"database (tables: {shown}); MLflow would add its tables to it")


def check_store(uri: str) -> None:
    """Fail in one line, before Ray starts, if the tracking store cannot be written."""
    db = sqlite_file(uri)
    if db is not None:
        folder = db.parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise UserError(f"--tracking-uri: {uri}: expected a writable folder for the database, {folder} is not one")
        artifacts = db.parent / f"{db.stem}-artifacts"  # artifact_root's folder
        if artifacts.exists() and not (artifacts.is_dir() and os.access(artifacts, os.W_OK)):
            raise UserError(f"--tracking-uri: {uri}: expected a writable folder for the runs' files at {artifacts}, "
                            "found " + ("a file" if not artifacts.is_dir() else "a folder this user cannot write"))
        if not db.exists():
            return  # MLflow creates it at the first write
        if not (db.is_file() and os.access(db, os.W_OK)):
            raise UserError(f"--tracking-uri: {uri}: expected a writable SQLite file, {db} is not one")
        check_not_foreign(uri)
    _probe(uri)


def reader(uri: str) -> MlflowClient:
    """A client for queries (best, report): it never creates a store, and an unusable one is one line."""
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise UserError(f"--tracking-uri: no MLflow database at {db} (no sweep has run here; "
                        "pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    check_not_foreign(uri)
    _probe(uri)
    return client(uri)


def artifact_root(uri: str) -> str | None:
    """For a SQLite store: artifacts in a folder beside the database file (else the server decides)."""
    db = sqlite_file(uri)
    return None if db is None else (db.parent / f"{db.stem}-artifacts").as_uri()


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


MODEL_TRAINING = "custom_model_development"  # the names.EXPERIMENT_KIND of a sweep's experiment


def ensure_experiment(mlflow_client: MlflowClient, name: str, uri: str, space: Space) -> str:
    """The MLflow experiment for this sweep name, created once, here on the driver."""
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        if names.EXPERIMENT_KIND not in existing.tags:  # made by an earlier ratsweep
            mlflow_client.set_experiment_tag(existing.experiment_id, names.EXPERIMENT_KIND, MODEL_TRAINING)
        return existing.experiment_id
    return mlflow_client.create_experiment(
        name,
        artifact_location=artifact_root(uri) and f"{artifact_root(uri)}/{name}",
        tags={names.EXPERIMENT_TYPE: space.experiment, names.EXPERIMENT_METRIC: space.metric, names.EXPERIMENT_MODE: space.mode,
              names.EXPERIMENT_KIND: MODEL_TRAINING},
    )


def git_commit(file: str | None = None) -> str | None:
    """The commit of the working directory's checkout; with `file`, of the checkout that tracks that
    file (None for an installed copy, even inside another checkout's ignored .venv)."""
    where = ["-C", str(Path(file).parent)] if file else []
    try:
        if file and subprocess.run(["git", *where, "ls-files", "--error-unmatch", Path(file).name],
                                   capture_output=True, timeout=5).returncode:
            return None
        out = subprocess.run(["git", *where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(space: Space) -> dict[str, str]:
    """Tags naming the distributions that provide the sweep's experiment and the architectures it
    names, with their versions, and the git commit of any that runs from a checkout (a plugin under
    development): `ratsweep.provider.<distribution>` and `...<distribution>.commit`."""
    experiment = registry.get_experiment(space.experiment)
    named = {str(v) for v in space.config.values()} | {str(v) for d in space.search_space.values() for v in d.values}
    modules = {experiment.source} | {a.source for name, a in registry.architectures().items() if name in named}
    tags = {}
    for module in sorted(modules):
        dist = registry.distribution(module)
        if dist is None:  # registered from a script
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            continue
        if dist != "ratsweep":  # ratsweep.version says that one
            tags[f"{names.PROVIDER}{dist}"] = version
        file = getattr(sys.modules.get(module), "__file__", None)
        commit = git_commit(file) if file else None
        if commit:
            tags[f"{names.PROVIDER}{dist}.commit"] = commit
    return tags


def sweep_plan(space: Space) -> dict[str, Any]:
    """What a sweep sets out to run, so `report` can keep the space's order and count what is missing:
    each key's values in the order the space lists them (fixed ones too), every distinct trial's
    full config (random/grid search; None for model-based searchers, which decide as they go) and
    the resources per trial."""
    order = {key: [value] for key, value in space.config.items()}
    order |= {key: list(domain.values) for key, domain in space.search_space.items() if domain.kind in ("grid", "choice")}
    trials = None
    if space.search_alg["type"] in ("random", "grid"):
        trials = [cfg.flatten(space.build_config(trial)) for trial in space.trials()]
    return {"order": order, "trials": trials, "resources": space.resources}


def start_sweep_run(mlflow_client: MlflowClient, experiment_id: str, space: Space, sweep_id: str, smoke: bool) -> str:
    """The parent run of one `ratsweep run` invocation, with the search space and its plan attached."""
    import ratsweep  # noqa: PLC0415

    tags = {
        names.KIND: "sweep", names.SWEEP: space.name, names.SWEEP_ID: sweep_id, names.SMOKE: str(smoke).lower(),
        names.VERSION: ratsweep.__version__, names.SPACE: space.path, names.RUN_NAME: f"sweep {sweep_id}",
    }
    if space.report:
        tags[names.REPORT] = json.dumps(space.report)
    tags |= provenance(space)
    commit = git_commit()
    if commit:
        tags[names.GIT_COMMIT] = commit
    run = mlflow_client.create_run(experiment_id, tags=tags)
    mlflow_client.set_experiment_tag(experiment_id, names.SHARED_VIEW + sweep_id, runs_view(space, sweep_id))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "search_space.yaml"
            import yaml  # noqa: PLC0415

            path.write_text(yaml.safe_dump(space.document, sort_keys=False))
            mlflow_client.log_artifact(run.info.run_id, str(path))
            plan = Path(tmp) / PLAN_FILE
            plan.write_text(json.dumps(sweep_plan(space)))
            mlflow_client.log_artifact(run.info.run_id, str(plan))
    except Exception as e:  # an artifact store that cannot be written: no run is left RUNNING
        mlflow_client.set_terminated(run.info.run_id, "FAILED")
        raise UserError(f"MLflow: cannot store the sweep's files at {run.info.artifact_uri} ({reason(e)}); the "
                        f"sweep did not start (its run {run.info.run_id} is marked FAILED)") from None
    return run.info.run_id


def _numeric(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in _TUNE_KEYS or key == RESULT_KEY:
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


class MlflowTracking(Callback):
    """Tune callback that mirrors every trial into an MLflow child run of the sweep's parent run.
    Its writes go through an Outbox: held while the store is down, never dropped silently."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, space: Space, folder: str | Path | None = None,
                 sweep_id: str = "", smoke: bool = False):
        self.space = space
        self.outbox = Outbox(uri, experiment_id, parent_run_id, folder, background=True)
        self.sweep_tags = {names.SWEEP: space.name, names.SWEEP_ID: sweep_id, names.SMOKE: str(smoke).lower()}
        self._names: dict[str, str] = {}  # trial id -> its run's name, each distinct
        self._failures: dict[str, str] = {}
        self._configs: dict[str, dict] = {}  # the applicable config each run was started with
        self._last_step: dict[str, int] = {}  # the last report step logged per trial
        self._replaying: dict[str, int] = {}  # a retried trial's reports up to this step were logged before it failed
        self._last_x: dict[str, int] = {}  # the MLflow step of each trial's last report (its images are logged at it)
        self.commit = git_commit()  # of the driver's code, which the trials run
        self.provenance = provenance(space)

    def on_trial_start(self, iteration, trials, trial, **info):
        params = {k: _param(v) for k, v in cfg.flatten(self.space.build_config(trial.config)).items()}
        tags = {names.PARENT: self.outbox.parent_run_id, names.KIND: "trial", names.TRIAL: trial.trial_id,
                names.RUN_NAME: self._name(trial), **self.sweep_tags,
                names.SEARCHED: ",".join(sorted(self.space.active(trial.config)))}
        if self.commit:
            tags[names.GIT_COMMIT] = self.commit
        self._configs.setdefault(trial.trial_id, self.space.active(trial.config))
        self.outbox.put({"op": "start", "trial": trial.trial_id, "create": {"tags": tags | self.provenance, "params": params}})

    def _name(self, trial) -> str:
        """The trial's name from its searched values; a second trial that reads the same (random
        values equal to 3 digits) gets its Tune id added."""
        if trial.trial_id not in self._names:
            name = self.space.trial_name(trial.config)
            self._names[trial.trial_id] = name if name not in self._names.values() else f"{name} · {trial.trial_id}"
        return self._names[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step, now = int(result.get("training_iteration", 0)), int(time.time() * 1000)
        x = next((int(result[k]) for k in names.STEP_KEYS if isinstance(result.get(k), (int, float))), step)  # the MLflow step
        extra = result.get(RESULT_KEY) or {}
        # an artifacts-only result repeats the last report's metrics: they are logged once. NaN (a
        # diverged trial's last report) is not logged, so the run keeps the last finite value: for a
        # best_* metric the best before divergence, which `report --failed-as` counts as the CIFAR and Tiny ImageNet authors did.
        replayed = step <= self._replaying.get(trial.trial_id, -1)  # a report the failed attempt already logged
        if not replayed:
            self._replaying.pop(trial.trial_id, None)
            self._last_step[trial.trial_id] = step
        metrics = [] if extra.get("artifacts_only") or replayed else \
            [[k, v, now, x] for k, v in _numeric(result).items() if not math.isnan(v)]
        self._last_x[trial.trial_id] = x
        params = {k: _param(v) for k, v in (extra.get("params") or {}).items()}
        tags = {k: str(v) for k, v in (extra.get("tags") or {}).items()}
        config = self.space.active(trial.config)
        previous = self._configs.setdefault(trial.trial_id, config)
        changed = {k: v for k, v in config.items() if previous.get(k) != v}
        if changed:  # PBT mutated the config (params are immutable in MLflow: a tag per change)
            tags[f"{names.CONFIG_FROM_STEP}{step}"] = json.dumps(changed)
            self._configs[trial.trial_id] = config
        if extra.get("failure"):
            self._failures[trial.trial_id] = extra["failure"]
            tags[names.FAILURE] = extra["failure"][:5000]
        self.outbox.put({"op": "log", "trial": trial.trial_id, "metrics": metrics, "params": params, "tags": tags,
                         "retried": trial.run_metadata.num_failures > 0})

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = "FAILED" if trial.trial_id in self._failures else "FINISHED"
        self.outbox.put({"op": "end", "trial": trial.trial_id, "status": status, "unless_finished": True,
                         "artifacts": self._artifacts(trial), "step": self._last_x.get(trial.trial_id, 0)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial that failed (its node died) restarts from its last checkpoint, which may predate its
        last logged report: each step stays logged once."""
        self._replaying[trial.trial_id] = self._last_step.get(trial.trial_id, -1)
        self.outbox.put({"op": "log", "trial": trial.trial_id, "tags": {names.RETRIES: str(trial.run_metadata.num_failures)}})

    def on_trial_error(self, iteration, trials, trial, **info):
        """Out of retries: FAILED, the exception's last line as a tag, the whole trace as error.txt."""
        trace = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
        lines = [line.strip() for line in trace.splitlines() if line.strip()]
        tags = _raised_tags(trial) | {names.FAILURE: (lines[-1] if lines else "trial failed")[:5000]}
        op = {"op": "end", "trial": trial.trial_id, "status": "FAILED", "artifacts": self._artifacts(trial), "tags": tags}
        if trace:
            op |= {"text": trace, "text_file": "error.txt"}
        self.outbox.put(op)

    def _artifacts(self, trial) -> str | None:
        """The trial's artifact folder from its latest checkpoint, spooled until it is sent."""
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            artifacts = Path(directory) / ARTIFACTS
            return self.outbox.spool(trial.trial_id, artifacts) if artifacts.is_dir() else None


def _raised_tags(trial) -> dict[str, str]:
    """The environment tags the trainable attached to the exception that ended the trial (node,
    device, versions): a trial that failed before its first report has no other record of them."""
    path = trial.pickled_error_file
    try:
        error = cloudpickle.loads(Path(path).read_bytes()) if path else None
    except Exception:  # noqa: BLE001  (a missing or unreadable file: nothing to add)
        return {}
    tags = getattr(getattr(error, "cause", error), TAGS_ATTRIBUTE, None) or {}
    return {k: str(v) for k, v in tags.items()}


def _param(value) -> str:
    return str(list(value) if isinstance(value, tuple) else value)[:6000]


def trial_runs(uri: str, parent_run_id: str) -> dict[str, tuple[str, str]]:
    """{Tune trial id: (run id, status)} of the sweep's trial runs."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{names.PARENT}` = '{parent_run_id}'",
                                     max_results=50_000)
    return {run.data.tags.get(names.TRIAL, ""): (run.info.run_id, run.info.status) for run in runs}


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def open_ui_command(uri: str) -> str:
    if sqlite_file(uri) is not None:
        return shlex.join(["mlflow", "ui", "--backend-store-uri", uri])
    return f"open {uri} in a browser (experiment runs are under the sweep's name)"


def runs_view(space: Space, sweep_id: str) -> str:
    """The shared view of one sweep's runs (its trials and its own run), best first, with the metric
    and the searched keys as columns."""
    return json.dumps({
        "searchFilter": f"tags.`{names.SWEEP_ID}` = '{sweep_id}'", "orderByKey": f"metrics.`{space.metric}`",
        "orderByAsc": space.mode == "min", "compareRunsMode": "TABLE",
        "selectedColumns": [f"metrics.`{space.metric}`", *(f"params.`{key}`" for key in space.search_space)],
    })


def runs_link(uri: str, experiment_id: str, sweep_id: str) -> str:
    """The MLflow UI's page of the sweep's shared view (runs_view), on its "Model training" side (not GenAI's)."""
    parts = urllib.parse.urlsplit(uri)
    server = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}" \
        if parts.scheme in ("http", "https") else UI_ADDRESS  # never the URI's credentials
    return f"{server}/#/experiments/{experiment_id}/runs?viewStateShareKey={sweep_id}&workflowType=machine_learning"


def outcome_op(space: Space, rows: list[dict[str, Any]], runs: dict[str, str], experiment_id: str, smoke: bool,
               tally: str, top: int = 5) -> dict[str, Any]:
    """The sweep run's outcome as an outbox operation: the best value as metric best.<metric>, the
    best trial's searched values as params best.<key>, and a description (the UI's markdown note)
    with the top trials (rows: the summary's, best first) and how to rerun the best one."""
    ranked = [r for r in rows if r["status"] == "OK" and r["value"] is not None and math.isfinite(r["value"])]
    if not ranked:
        note = f"### {space.name}: no finished trial has {space.metric}\n\n{len(rows)} trials: {tally}.\n"
        return {"op": "outcome", "metrics": [], "params": {}, "tags": {names.NOTE: note}}
    best = ranked[0]  # rows come best first

    def link(row) -> str:
        run = runs.get(row["trial_id"])
        return f"[{run[:8]}](#/experiments/{experiment_id}/runs/{run})" if run else "-"

    lines = [f"### {space.name}: best {space.metric} ({space.mode}) {best['value']:.6g}, {best['name']}", "",
             f"{len(rows)} trials: {tally}.", "", f"| rank | trial | {space.metric} | run |", "|---|---|---|---|"]
    lines += [f"| {i} | {row['name']} | {row['value']:.6g} | {link(row)} |" for i, row in enumerate(ranked[:top], 1)]
    best_command = shlex.join(["ratsweep", "best", space.name, *(["--include-smoke"] if smoke else []), "--format", "yaml"])
    lines += ["", f"Rerun the best config: `{best_command} > best.yaml && ratsweep run best.yaml`",
              "", "The report's table and plots: Artifacts, report/ (`ratsweep report " + space.name + "`)."]
    return {"op": "outcome", "metrics": [[f"{names.BEST}{space.metric}", best["value"], int(time.time() * 1000), 0]],
            "params": {f"{names.BEST}{k}": _param(v) for k, v in best["config"].items()},
            "tags": {names.NOTE: "\n".join(lines) + "\n", names.BEST_TRIAL: best["name"],
                     **({names.BEST_RUN: runs[best["trial_id"]]} if best["trial_id"] in runs else {})}}


