"""Run (or resume) the sweeps of a search-space file on local Ray or a cluster, tracked in MLflow."""

from __future__ import annotations

import functools
import glob
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from .. import config as cfg
from .. import registry
from . import ray_internals, search, tracking
from .outbox import OUTBOX_FILE, Outbox, reason, redacted
from ..errors import SpaceError, UserError
from .space import Space
from .trainable import ITERATION_KEY, checkpoint_iteration, make_trainable

FINAL_WAIT_S = 30  # how long a finished sweep keeps trying to send held MLflow writes (RATSWEEP_MLFLOW_FINAL_WAIT_S)
SWEEP_FILE = "ratsweep_sweep.json"  # in the Tune experiment folder: what --resume needs to continue


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


ADDRESS_TIMEOUT_S = 5  # for a Ray head to answer --address (ray.init would retry a dead one for ever)
# A gRPC server (as a Ray head's GCS is) answers HTTP/2's client preface with a SETTINGS frame (type 4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str | None) -> None:
    """--address is a running Ray head's GCS address (HOST:PORT, as `ray start --head` prints it) or
    auto: checked within ADDRESS_TIMEOUT_S, or one line."""
    if address is None or address in ("auto", "local"):
        return
    if address.startswith("ray://"):  # Tune would run on the head, writing there to this machine's paths
        raise UserError(f"--address: {address}: Ray Client (ray://) is not supported; send the sweep to the cluster "
                        "with `ratsweep submit --address http://HEAD:8265`, or run on a node with --address HEAD:6379")
    host, sep, port = address.rpartition(":")
    if "://" in address or not (sep and host and port.isdigit()):
        raise UserError(f"--address: expected a Ray head's HOST:PORT as `ray start --head` prints it (e.g. 10.0.0.5:6379), "
                        f"or auto, got {address!r}" + ("; a dashboard's http:// address is for ratsweep submit" if "://" in address else ""))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = connection.recv(9)
    except OSError as e:
        raise UserError(f"--address: no Ray head answers at {address} ({e.strerror or e}); start one there with "
                        "`ray start --head`, or leave out --address for a local Ray") from None
    if len(reply) < 4 or reply[3] != 4:
        raise UserError(f"--address: {address} answers, but not as a Ray head's GCS port (`ray start --head` prints "
                        "it, port 6379 by default; a dashboard, port 8265, is for ratsweep submit)")


# A local Ray keeps its session (sockets, every worker's log) in its temporary folder: on a full disk
# it fails a minute later with a timeout naming a port file.
MIN_RAY_TEMP_FREE_MB = 100


def ray_temp_root() -> Path:
    """Where a local Ray puts its sessions, as Ray chooses it: $RAY_TMPDIR, else $TMPDIR, else /tmp; then ray/."""
    return Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"


def _free_mb(path: Path) -> float:
    """Free space where the path is (or would be created)."""
    return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 2**20


def check_ray_temp() -> None:
    """Room for a local Ray's session, or one line saying where it is short of it."""
    root = ray_temp_root()
    free_mb = _free_mb(root)
    if free_mb < MIN_RAY_TEMP_FREE_MB:
        raise UserError(f"Ray's temporary folder {root} has {free_mb:.0f} MB free, a local Ray needs at least "
                        f"{MIN_RAY_TEMP_FREE_MB} MB: free some space there, or set RAY_TMPDIR to a folder with room")


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    ray_internals.check_version()
    check_address(address)
    local = address is None and "RAY_ADDRESS" not in os.environ
    if local:
        check_ray_temp()
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
        raise UserError(f"a local Ray did not start ({reason(e)}); its temporary folder {ray_temp_root()} has "
                        f"{_free_mb(ray_temp_root()):.0f} MB free") from None


def shutdown_ray() -> None:
    """Stop the local Ray this driver started (about a second), or leave the cluster it joined."""
    ray.shutdown()


def check_cluster(space: Space, smoke: bool = False) -> None:
    """Resources the cluster cannot give would leave trials pending forever: refuse up front.
    A smoke run shrinks trials to run anywhere: each takes one CPU, and on CPU where the cluster has
    no GPU; what the real run asks for is still checked, and what it would be refused is said."""
    available = ray.cluster_resources()
    refusals = []
    for name, key in (("cpu", "CPU"), ("gpu", "GPU")):
        need, have = space.resources[name], available.get(key, 0.0)
        if need > have:
            what = f"at most {have:g} (this cluster has {have:g} {key}s)" if have else f"0 (this cluster has no {key})"
            refusals.append(f"{space.path}: resources.{name}: expected {what}, got {need:g}")
    if not smoke:
        if refusals:
            raise SpaceError(refusals[0])
        return
    for refusal in refusals:
        print(f"ratsweep: --smoke: {refusal}; a run without --smoke is refused here", flush=True)
    space.resources["cpu"] = min(space.resources["cpu"], 1.0)
    if space.resources["gpu"] > 0 and not available.get("GPU"):
        print(f"ratsweep: {space.name}: --smoke on a cluster without GPUs: trials run on CPU", flush=True)
    space.resources["gpu"] = min(space.resources["gpu"], available.get("GPU", 0.0))


def check_data(space: Space, data_dir: str) -> None:
    """The experiment's registered datasets are under data_dir (DataError saying how to get them);
    a dataset with `keys` is asked only for the values of those keys this sweep can take."""
    experiment = registry.get_experiment(space.experiment)
    for name in experiment.datasets:
        dataset = registry.get_dataset(name)
        dataset.verify(Path(data_dir), **{key: values for key in dataset.keys if (values := sweep_values(space, key)) is not None})


def sweep_values(space: Space, key: str) -> tuple | None:
    """The values a key can take in the sweep: its fixed value, its grid or choice, else the
    experiment's default; None where a searcher samples it from a range."""
    if key in space.config:
        return (space.config[key],)
    domain = space.search_space.get(key)
    if domain is not None:
        return tuple(domain.values) if domain.kind in ("grid", "choice") else None
    config_class = registry.get_experiment(space.experiment).config
    if key not in cfg.keys(config_class):
        return None
    return (functools.reduce(getattr, key.split("."), cfg.build(config_class)),)


def latest_sweep(storage: Path, name: str) -> Path | None:
    """The newest restorable Tune experiment folder of this sweep name."""
    candidates = sorted(storage.glob(f"{glob.escape(name)}-*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for marker in candidates:
        if tune.Tuner.can_restore(str(marker.parent)):
            return marker.parent
    return None


def check_resumable(spaces: list[Space], storage: str, smoke: bool) -> None:
    """--resume with no sweep of the file under --storage (a mistyped --storage, a first run) is one
    line, not every trial run again; a file's sweeps that never started do start when another
    resumes. A sweep whose space changed since it began (or --smoke, or --set) is refused: Tune
    would go on with the old search, silently, and the new fixed config would apply to only some trials."""
    folder = Path(storage).expanduser().resolve()
    previous = {space.name: latest_sweep(folder, space.name) for space in spaces}
    if not any(previous.values()):
        names = ", ".join(repr(space.name) for space in spaces)
        raise UserError(f"--resume: expected an earlier sweep of {names} under {folder}, found none; "
                        "check --storage, or run without --resume to start afresh")
    for space in spaces:
        try:
            marker = json.loads((previous[space.name] / SWEEP_FILE).read_text()) if previous[space.name] else {}
            began = {**marker["definition"], "smoke": marker["smoke"]}
        except (ValueError, KeyError, TypeError):  # a sweep of an earlier ratsweep, or a damaged file (run_sweep says so)
            continue
        changed = _changes(began, {**space.definition(), "smoke": smoke})
        if changed:
            raise UserError(f"--resume: {space.path}: {space.name} is not the sweep that began in {previous[space.name]} "
                            f"(changed since: {', '.join(changed)}); a resumed sweep goes on as it began: put the file "
                            "(and --set, --smoke) back as they were, or run without --resume to start a new sweep")


def _changes(began: dict, now: dict) -> list[str]:
    """The keys whose values differ, as a space file names them (config.steps, search_space.activation)."""
    out = []
    for key in sorted(began.keys() | now.keys()):
        old, new = began.get(key), now.get(key)
        if key == "search_space" and len(old or ()) == len(new or ()) == 1:  # not a union: compare its keys
            old, new = old[0], new[0]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        else:
            out.append(key)
    return out


def reserve_folder(storage: Path, name: str, stamp: str) -> Path:
    """The new sweep's Tune folder, NAME-STAMP, or NAME-STAMP-2, -3, ... when a sweep of that name
    started in the same second: created here, so two sweeps never share one."""
    storage.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        path = storage / (f"{name}-{stamp}" if attempt == 1 else f"{name}-{stamp}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _intact(path: Path) -> bool:
    """Tune's state files are JSON or cloudpickle; a truncated copy is neither."""
    from ray import cloudpickle  # noqa: PLC0415

    data = path.read_bytes()
    for load in (json.loads, cloudpickle.loads):
        try:
            load(data)
            return True
        except Exception:  # noqa: BLE001  (any decoding error means damaged)
            continue
    return False


def repair_tune_state(experiment: Path) -> list[str]:
    """Tune writes its state files on the driver (atomically), then copies them into the storage
    folder (not atomically): a driver killed during the copy leaves a truncated file there, and
    Tune, failing to read it, would silently restart the whole sweep. Put back the intact original
    from the driver's staging folder, or refuse to resume rather than run trials twice."""
    ray_temp = ray_temp_root()
    repaired = []
    # experiment_state-*, search_gen_state-*, searcher-state-*, basic-variant-state-* (tuner.pkl is
    # written once, before any trial)
    for path in sorted(experiment.glob("*-state-*.*")) + sorted(experiment.glob("*_state-*.json")):
        if path.name.startswith(".") or not path.exists() or _intact(path):  # .<uuid>-tmp-*: Tune's own temp files
            continue
        staged = sorted(ray_temp.glob(f"session_*/artifacts/*/{glob.escape(experiment.name)}/driver_artifacts/{path.name}"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        original = next((p for p in staged if _intact(p)), None)
        if original is None:
            raise SpaceError(f"--resume: {path} is damaged (the driver was killed while Tune copied it) and the "
                             "driver's own copy is gone; run without --resume to start this sweep afresh")
        shutil.copy2(original, path)
        repaired.append(path.name)
    return repaired


def repoint_lost_checkpoints(experiment: Path) -> list[str]:
    """Tune deletes a trial's older checkpoint (num_to_keep) as soon as a newer one is registered, but
    saves its experiment state only on a period: a driver killed in between leaves a state naming a
    deleted checkpoint, and that trial would fail every restore. Point it at the checkpoint that
    replaced it instead, with the iteration the trainable recorded there; returns the trials repointed."""
    repointed = []
    for path in sorted(experiment.glob("experiment_state-*.json")):
        state = json.loads(path.read_text())
        changed = False
        for pair in state["trial_data"]:
            trial, metadata = ray_internals.read_trial(pair)
            latest = ray_internals.latest_checkpoint(metadata)
            if latest is None:
                continue
            recorded, recorded_metrics = latest
            lost = Path(recorded.path)
            folder = experiment / lost.parent.name
            if (folder / lost.name).exists():
                continue
            # Zero-padded indices: by name is by age. The oldest complete one is the checkpoint Tune had
            # registered (deleting `lost`) after its result was logged; newer ones may be a worker's
            # whose result the driver never saw, or a copy the kill cut short.
            found = ((c, checkpoint_iteration(c)) for c in sorted(folder.glob("checkpoint_*")) if c.name > lost.name)
            replacement, iteration = next(((c, i) for c, i in found if i is not None), (None, None))
            if replacement is None:
                continue  # nothing to point at: Tune says the checkpoint is gone
            checkpoint = tune.Checkpoint(str(lost.with_name(replacement.name)), filesystem=recorded.filesystem)
            metrics = {**recorded_metrics, ITERATION_KEY: iteration, "checkpoint_dir_name": replacement.name}
            ray_internals.replace_latest_checkpoint(metadata, checkpoint, metrics)
            trial["storage"].current_checkpoint_index = int(replacement.name.removeprefix("checkpoint_"))  # the next is one more
            pair[:] = ray_internals.write_trial(trial, metadata)
            repointed.append(f"{trial['trial_id']} ({lost.name} -> {replacement.name})")
            changed = True
        if changed:
            staged = path.with_name(f".{path.name}.ratsweep")
            staged.write_text(ray_internals.write_state(state))
            staged.replace(path)
    return repointed


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
        except BaseException:
            path.rmdir()  # still empty: no sweep began
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
