"""Run (or resume) the sweeps of a search-space file on local Ray or a cluster, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from . import checks, ray_internals, search, tracking
from .resume import SWEEP_FILE, latest_sweep, repair_tune_state, repoint_lost_checkpoints, reserve_folder
from .outbox import OUTBOX_FILE, Outbox, reason, redacted
from ..errors import UserError
from .space import Space
from .trainable import make_trainable

FINAL_WAIT_S = 30  # how long a finished sweep keeps trying to send held MLflow writes (RATSWEEP_MLFLOW_FINAL_WAIT_S)


@dataclass
class RunOptions:
    smoke: bool = False
    data_dir: str = "data"
    tracking_uri: str | None = None
    storage: str = "ratsweep_results"
    address: str | None = None
    resume: bool = False
    max_concurrent: int | None = None
    flush_denormal: bool = True  # CPU trials flush subnormal floats (see trainable.make_trainable)


@dataclass
class SweepOutcome:
    space: Space
    path: str  # the Tune experiment folder
    tracking_uri: str
    rows: list[dict]  # one per trial: status, config, metric
    interrupted: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did
    unsent: str = ""  # MLflow writes the store did not take by the end (Outbox.unsent), kept for `ratsweep sync`
    wall_s: float = 0.0  # from the start of this invocation's sweep to its summary
    mlflow_s: float = 0.0  # the driver's MLflow writes (trial runs, metrics, artifacts, statuses), mostly in a sender thread
    mlflow_waited_s: float = 0.0  # the time the sweep itself waited for them
    mlflow_writes: int = 0
    experiment_id: str = ""

    def counts(self) -> dict[str, int]:
        return count_outcomes(self.space, self.rows)


def count_outcomes(space: Space, rows: list[dict]) -> dict[str, int]:
    """Trials by outcome: finished, failed, diverged, interrupted, and (random/grid search, whose
    trials are known up front) not started."""
    out = {"finished": 0, "failed": 0, "diverged": 0, "interrupted": 0, "not started": 0}
    for row in rows:
        out[OUTCOME[row["status"]]] += 1
    if space.search_alg["type"] in ("random", "grid"):  # trials Tune had not even created
        out["not started"] += max(len(space.trials()) - len(rows), 0)
    return out


def tally(counts: dict[str, int]) -> str:
    """"12 finished, 2 failed": the outcomes there are (finished always)."""
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "finished")


OUTCOME = {"OK": "finished", "ERROR": "failed", "FAILED": "failed", "DIVERGED": "diverged", "INTERRUPTED": "interrupted",
           "NOT STARTED": "not started"}


class Signals:
    """SIGINT and SIGTERM stop a sweep the way Tune's own SIGINT handler does (trials stopped, state
    saved for --resume; Tune's loop handles SIGUSR1 the same way, and we raise that), and the signal
    is remembered: for the exit code (128 + signal) and to tell an interrupted sweep from a finished
    one, which tuner.fit() does not. Where Tune's handler is not in place (outside its loop: `disarm`
    puts a placeholder back after every fit), or at a second signal, it is a KeyboardInterrupt."""

    received: int | None = None

    @classmethod
    def install(cls) -> None:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours stands in for Tune's (it would hide the signal)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, cls._stop)
        cls.disarm()

    @classmethod
    def disarm(cls) -> None:
        signal.signal(signal.SIGUSR1, cls._placeholder)

    @staticmethod
    def _placeholder(signum, frame) -> None:
        """SIGUSR1 outside Tune's loop: nothing to stop (its default action would end the process)."""

    @classmethod
    def _stop(cls, signum, frame) -> None:
        first, cls.received = cls.received is None, signum
        if first and signal.getsignal(signal.SIGUSR1) is not cls._placeholder:
            signal.raise_signal(signal.SIGUSR1)
        else:
            raise KeyboardInterrupt


class _NotAppliedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Pre-set value `None` is not within valid values")


class _NoRestoreHint(logging.Filter):
    """Tune's 'Resume experiment with: Tuner.restore(...)' is not how a ratsweep user resumes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()


class _VanishedTempFile(logging.Filter):
    """Tune copies its state folder to storage in the background while it may write the next state
    through a temporary file: a copy that found the temporary file gone is harmless (the next copy
    takes the whole folder again) and is not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Last sync command failed") and "FileNotFoundError" in message and "-tmp-" in message)


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    ray_internals.check_version()
    checks.check_address(address)
    local = address is None and "RAY_ADDRESS" not in os.environ
    if local:
        checks.check_ray_temp()
    # Each point of a random/grid search holds None for the keys that do not apply (search.py);
    # Tune warns once per trial and key that None is not among the domain's values.
    logging.getLogger("ray.tune.search.variant_generator").addFilter(_NotAppliedWarning())
    # Every report checkpoints (ASHA may stop a trial after any), and with num_to_keep Tune then
    # snapshots its experiment state after each one: its "snapshotting too often" warning is
    # expected here. Those snapshots (and Tune's own period) are enough: a trial that finished after
    # the last one is restored from its final checkpoint on --resume, reports nothing new and keeps
    # its run as it was.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow is the sweep's record: Tune's TensorBoard files are not written (its result.json and
    # progress.csv are, by the callbacks _new_tuner adds).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger(ray_internals.SYNC_LOGGER).addFilter(_VanishedTempFile())
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    except ConnectionError as e:  # --address auto with no Ray running here
        raise UserError(f"--address: {address}: {reason(e)}") from None
    except (OSError, RuntimeError) as e:  # a local Ray that could not start (its folder filled up meanwhile, ...)
        if not local:
            raise
        raise UserError(f"a local Ray did not start ({reason(e)}); its temporary folder {ray_internals.ray_temp_root()} has "
                        f"{checks.free_mb(ray_internals.ray_temp_root()):.0f} MB free") from None


def shutdown_ray() -> None:
    """Stop the local Ray this driver started (about a second), or leave the cluster it joined."""
    ray.shutdown()


def run_sweep(space: Space, options: RunOptions) -> SweepOutcome:
    # this sweep's share of the process-wide MLflow clocks (a file may hold several sweeps)
    started, spent_before, waited_before, writes_before = time.monotonic(), Outbox.spent_s, Outbox.waited_s, Outbox.writes
    uri = tracking.tracking_uri(options.tracking_uri)
    storage = Path(options.storage).expanduser().resolve()
    trainable = make_trainable(space, options.smoke, options.data_dir, options.flush_denormal)
    previous = latest_sweep(storage, space.name) if options.resume else None
    if previous is not None:
        # every state file read before MLflow is touched: a resume that cannot go on reopens no run
        try:
            marker = json.loads((previous / SWEEP_FILE).read_text())
            parent, uri = marker["parent_run_id"], marker["tracking_uri"]  # the store the sweep began in
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--resume: {previous / SWEEP_FILE} is damaged ({type(e).__name__}: {str(e)[:200]}); "
                            "run without --resume to start this sweep afresh") from None
        repaired = repair_tune_state(previous)
        repointed = repoint_lost_checkpoints(previous)
        try:
            tuner = tune.Tuner.restore(str(previous), trainable, resume_unfinished=True, resume_errored=True)
        except Exception as e:  # noqa: BLE001  (unpickling raises anything)
            raise UserError(f"--resume: Tune cannot read its state in {previous} ({type(e).__name__}: {reason(e)}); "
                            "run without --resume to start this sweep afresh") from None
        held = sync(previous)  # writes an earlier run of this sweep could not send
        if held:
            print(f"ratsweep: {held}", flush=True)
        tracking.client(uri).update_run(parent, status="RUNNING")
        experiment_id = marker.get("experiment_id") or tracking.client(uri).get_run(parent).info.experiment_id
        print(f"ratsweep: resuming {previous} (MLflow parent run {parent})"
              + (f"; restored {', '.join(repaired)} from the driver's copy" if repaired else "")
              + (f"; trials whose recorded checkpoint was already replaced resume from its replacement: {', '.join(repointed)}"
                 if repointed else ""), flush=True)
        path = previous
    else:
        if options.resume:  # another sweep of the file resumes (check_resumable): this one never started
            print(f"ratsweep: nothing to resume for {space.name!r} under {storage}; starting it", flush=True)
        path = reserve_folder(storage, space.name, time.strftime("%Y%m%d-%H%M%S"))
        sweep_id = path.name
        client = tracking.client(uri)
        try:
            experiment_id = tracking.ensure_experiment(client, space.name, uri, space)
            parent = tracking.start_sweep_run(client, experiment_id, space, sweep_id, options.smoke)
        except BaseException as e:
            path.rmdir()  # still empty: no sweep began
            refused = tracking.refusal(e, uri)  # e.g. a read-only user: one line naming the variables
            if refused is not None:
                raise refused from None
            raise
        tuner = _new_tuner(space, options, trainable, storage, sweep_id, tracking.MlflowTracking(uri, experiment_id, parent, space, path,
                                                                                            sweep_id, options.smoke))
        (path / SWEEP_FILE).write_text(json.dumps({"parent_run_id": parent, "experiment_id": experiment_id, "tracking_uri": uri,
                                                   "space": space.path, "definition": space.definition(), "smoke": options.smoke}))
    tune_log = logging.getLogger("ray.tune.tune")
    hint = _NoRestoreHint()
    tune_log.addFilter(hint)
    try:
        results = tuner.fit()
    except BaseException as e:  # no run may stay RUNNING; --resume reopens them
        Outbox.stop_senders()
        finishing(path, uri, experiment_id, parent).put({"op": "finish_sweep", "status": "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"})
        raise
    finally:
        Signals.disarm()
        tune_log.removeFilter(hint)
    interrupted = Signals.received
    Outbox.stop_senders()  # the callback's writes still on their way are in its file now
    outbox = finishing(path, uri, experiment_id, parent)  # as the callback (a restored copy, after --resume) last saved it
    # stopped: trials whose runs did not end (RUNNING), or ended by an earlier interrupt and not
    # restarted (KILLED); read only once every held write is sent, else Tune's own statuses stand
    runs: dict[str, tuple[str, str]] = {}  # trial id -> (run id, status)
    try:
        if outbox.flush():
            runs = tracking.trial_runs(uri, parent)
    except Exception:  # noqa: BLE001  (the store went away again)
        pass
    stopped = {trial for trial, (_, status) in runs.items() if status in ("RUNNING", "KILLED")}
    rows = _rows(space, results, stopped, bool(interrupted))
    if not interrupted:  # an interrupted sweep has no outcome yet: its --resume gives it one
        outbox.put(tracking.outcome_op(space, rows, {trial: run for trial, (run, _) in runs.items()}, experiment_id,
                                        options.smoke, tally(count_outcomes(space, rows))))
    outbox.put({"op": "finish_sweep", "status": "KILLED" if interrupted else "FINISHED"})
    final = time.monotonic()
    sent = outbox.flush(wait_s=float(os.environ.get("RATSWEEP_MLFLOW_FINAL_WAIT_S", FINAL_WAIT_S)))
    if sent and not interrupted:
        _attach_report(uri, space, parent, options.smoke)
    waited = Outbox.waited_s - waited_before + time.monotonic() - final  # the driver waits for the last writes too
    return SweepOutcome(space, str(path), uri, rows, interrupted, outbox.unsent(), time.monotonic() - started,
                        Outbox.spent_s - spent_before, waited, Outbox.writes - writes_before, experiment_id)


def _attach_report(uri: str, space: Space, parent: str, smoke: bool) -> None:
    """The sweep's report table and plots on its run (what `ratsweep report NAME --plots DIR` also attaches)."""
    from .. import report  # noqa: PLC0415  (matplotlib, only now)

    try:
        report.attach_report(uri, space.name, parent, smoke)
    except Exception as e:  # noqa: BLE001  (the sweep's runs are complete: a report can be made later)
        print(f"ratsweep: {space.name}: the report was not attached to the sweep's MLflow run ({reason(e)}); "
              f"`ratsweep report {space.name} --plots DIR` attaches it", flush=True)


def finishing(path: Path, uri: str, experiment_id: str, parent: str) -> Outbox:
    """The sweep's outbox with whatever its callback left pending (saved after every flush)."""
    file = path / OUTBOX_FILE
    return Outbox.load(file) if file.exists() else Outbox(uri, experiment_id, parent, path)


def sync(target: Path | str, wait_s: float = 10.0) -> str:
    """Send the MLflow writes a sweep held (its mlflow_outbox.json, or the Tune folder holding it).
    Returns "" when there were none, else a line saying what was sent or is still held."""
    file = Path(target)
    file = file / OUTBOX_FILE if file.is_dir() else file
    if not file.exists():
        return ""
    try:
        outbox = Outbox.load(file)
    except (ValueError, KeyError, TypeError) as e:  # cut short or edited: JSON, or not the outbox's
        raise UserError(f"{file}: expected the MLflow writes a sweep held, the file is damaged ({type(e).__name__}: "
                        f"{str(e)[:200]}); move it aside to go on without them") from None
    before = outbox.unsent()
    if outbox.flush(wait_s=wait_s) and not outbox.refused:
        return f"sent the held MLflow writes ({before}) to {redacted(outbox.uri)}"
    return f"could not send {outbox.unsent()} to {redacted(outbox.uri)}; they stay in {file}"


def _new_tuner(space: Space, options: RunOptions, trainable, storage: Path, sweep_id: str, callback) -> tune.Tuner:
    search_alg, param_space, num_samples = search.search_algorithm(space, options.max_concurrent)
    pbt = space.scheduler["type"] == "pbt"
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=search.scheduler(space),
            max_concurrent_trials=options.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            # A trial resumes from its latest checkpoint (a CIFAR VGG8 one is ~40 MB, hundreds of
            # trials per sweep); PBT exploits other trials' recent ones: keep more of them.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if pbt else 1),
            callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=1,  # Ray's status table as trials run; the summary table comes at the end
        ),
    )


def _rows(space: Space, results, stopped: set[str], interrupted: bool = False) -> list[dict]:
    """One row per trial; `stopped`: the ids of trials an interrupt stopped (their runs never ended).
    A trial that never reported in an interrupted sweep had not started (Tune gives it its id as metrics)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(space.metric)
        failure = (metrics.get("ratsweep") or {}).get("failure") or ""
        if result.error:
            status = "ERROR"
        elif metrics.get("trial_id") in stopped:
            status = "INTERRUPTED"
        elif interrupted and "training_iteration" not in metrics:
            status = "NOT STARTED"
        else:
            status = "DIVERGED" if failure.startswith("diverged") else "FAILED" if failure else "OK"
        config = space.active(result.config or {})
        rows.append({"status": status, "config": config, "value": value, "iterations": metrics.get("training_iteration"),
                     "trial_id": metrics.get("trial_id"), "name": space.trial_name(result.config or {})})
    sign = 1 if space.mode == "min" else -1
    rows.sort(key=lambda r: (r["value"] is None or not math.isfinite(r["value"]), sign * (r["value"] or 0)))
    return rows


def print_summary(outcome: SweepOutcome) -> None:
    space = outcome.space
    print(f"\n== {space.name}: {len(outcome.rows)} trials, {space.metric} ({space.mode}) ==")
    header = [space.metric, "status", "iters", "trial"]
    table = [["-" if r["value"] is None else f"{r['value']:.4g}", r["status"], str(r["iterations"] or "-"), r["name"]]
             for r in outcome.rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(header)]
    for row in [header, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    counts = outcome.counts()
    print(f"{space.name}: {tally(counts)}")
    uri = redacted(outcome.tracking_uri)  # printed (and kept in job logs): never a password
    if outcome.unsent:
        print(f"MLflow: {outcome.unsent} not written to {uri}; kept in "
              f"{Path(outcome.path) / OUTBOX_FILE}; send them with: ratsweep sync {shlex.quote(outcome.path)}")
    print(f"MLflow cost:  {outcome.mlflow_writes} writes took {outcome.mlflow_s:.1f} s "
          f"({1000 * outcome.mlflow_s / max(len(outcome.rows), 1):.0f} ms per trial, in the background); the sweep "
          f"waited {outcome.mlflow_waited_s:.1f} s for them, {100 * outcome.mlflow_waited_s / max(outcome.wall_s, 1e-9):.1f} % "
          f"of its {outcome.wall_s:.0f} s")
    print(f"Tune results: {outcome.path}")
    print(f"Best configs: {shlex.join(['ratsweep', 'best', space.name, '--tracking-uri', uri])}")
    print(f"MLflow UI:    {tracking.open_ui_command(uri)}")
    print(f"Runs, best first: {tracking.runs_link(uri, outcome.experiment_id, Path(outcome.path).name)}")
