"""The sweep's MLflow writes, sent in order and held while the tracking store cannot take them.

Every write the driver makes for a trial (its run with params and tags, each report's metrics, its
artifacts, its end status) is an operation in the outbox. `flush` sends them in order (each
trial's own order; a trial's run creation and the reports queued behind it as one request), during a
sweep from a sender thread, so that Tune's event loop only queues them; when the store is
unreachable or answers 5xx, the rest wait, and the sender tries again after a backoff that doubles
up to a minute. A write the store refuses for good (4xx)
is set aside with its reason. Whatever is pending or refused is kept in a JSON file beside Tune's
state (`mlflow_outbox.json`) after every flush, so nothing is lost with the driver either, and
`ratsweep sync` (or `run --resume`) sends it later. Operations name trials, not runs: a trial's run
is found by its tag or created when its first operation is sent, so a write queued before the
server came back lands in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from . import names

OUTBOX_FILE = "mlflow_outbox.json"
SPOOL_DIR = "mlflow_outbox"  # artifacts waiting to be sent, beside OUTBOX_FILE
WRITE_TIMEOUT_S, MAX_BACKOFF_S, WAITING_RETRY_S = 10, 60, 2
# The sender waits this long after being woken before it sends, so that a trial's run creation and
# its first reports (and other trials' writes) go out together: fewer, larger requests.
LINGER_S = 0.5
# One log_batch request of MLflow's REST API holds at most this many entities (params at most 100,
# tags at most 100): coalesced reports stay within one request, so a retried one is never half-sent.
MAX_BATCH_ENTITIES, MAX_BATCH_PARAMS_OR_TAGS = 1000, 100
BATCH_LOOKAHEAD = 256  # how far past the first pending write a batch looks (a long backlog stays linear to send)


# MLflow's HTTP client, in this process, tries each request once with a bound (by default it retries
# for minutes): the outbox decides on retrying, and the CLI's checks answer in seconds. Set here, once,
# as the module loads (in the main thread: os.environ is not for threads to change under each other).
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(WRITE_TIMEOUT_S)


def transient(error: Exception) -> bool:
    """Worth retrying: the store unreachable, timing out or failing (5xx); not a refusal (4xx)."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500
    return isinstance(error, OSError)  # connection refused or reset, a timeout, a locked SQLite file


def reason(error: Exception) -> str:
    """The first non-empty line of an error's message (MLflow's and drivers' run to pages), at most 300 characters."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:300]


def with_userinfo(parts: urllib.parse.SplitResult, userinfo: str = "") -> str:
    """The split URI put back together with `userinfo` ("user", "user:***"; "" for none) before its host."""
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}" if userinfo else host))


def redacted(uri: str) -> str:
    """The URI with any password replaced by ***: what may be printed or logged."""
    parts = urllib.parse.urlsplit(uri)
    return uri if parts.password is None else with_userinfo(parts, f"{parts.username}:***")


def writes(op: dict[str, Any]) -> Counter:
    """What an operation writes, by kind: metrics, params, tags, statuses, artifact folders."""
    count = Counter(metrics=len(op.get("metrics", ())), params=len(op.get("params", {})), tags=len(op.get("tags", {})))
    count["statuses"] = int("status" in op)
    count["artifact folders"] = int(bool(op.get("artifacts")))
    count["texts"] = int("text" in op)
    return +count


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where source and target share a file system (no bytes copied; the file lives on
    when Tune deletes the checkpoint it came from), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _coalesced(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's start or log operation and the reports queued after it, as one operation: its
    metrics in order, the first value of each param, the last of each tag."""
    merged = {**ops[0], "metrics": [m for op in ops for m in op.get("metrics", ())], "params": {}, "tags": {}}
    for op in ops:
        merged["params"] = {**op.get("params", {}), **merged["params"]}
        merged["tags"].update(op.get("tags", {}))
        merged["retried"] = merged.get("retried") or op.get("retried")
        merged["tried"] = merged.get("tried") or op.get("tried")
    return merged


def _entities(op: dict[str, Any]) -> tuple[int, int, int]:
    create = op.get("create") or {}
    return len(op.get("metrics", ())), len(op.get("params", {})) + len(create.get("params", {})), len(op.get("tags", {}))


class Outbox:
    # this process's MLflow writes over all its outboxes: their time (in whichever thread sent them)
    # and the time the callers waited for them, for the cost line of a sweep's summary
    spent_s: float = 0.0
    waited_s: float = 0.0
    writes: int = 0
    _clock = threading.Lock()
    _background: list[Outbox] = []  # outboxes with a sender thread running

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, folder: str | Path | None = None, background: bool = False):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.folder = Path(folder) if folder is not None else None  # where the file and the spooled artifacts live
        self.background = background  # sent by a thread of its own: Tune's event loop never waits on MLflow
        self.pending: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []  # operations the store rejected, each with its "error"
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.artifact_uris: dict[str, str] = {}  # run id -> its artifact URI, where this process learnt it (saves a read per upload)
        self.fresh = True  # a new sweep's: no run of its trials exists yet unless this outbox made it
        self.adopt_file = False  # restored with the Tuner: see __setstate__
        self.retry_at, self.backoff = 0.0, 1.0
        self.down_since: float | None = None
        self._client: MlflowClient | None = None
        self._init_threading()

    def _init_threading(self) -> None:
        self._lock, self._wake, self._stop = threading.Lock(), threading.Event(), threading.Event()
        self._halt = threading.Event()  # set by stop_senders: send nothing more, not even what waits
        self._sender: threading.Thread | None = None

    def __getstate__(self):  # pickled with the Tuner (restore): no live client, lock or thread
        with self._lock:
            state = {**self.__dict__, "pending": list(self.pending), "refused": list(self.refused), "runs": dict(self.runs)}
        for key in ("_client", "_lock", "_wake", "_stop", "_halt", "_sender"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        # restored (--resume): runs may exist already, and what was held is in the file, not in the
        # pickled copy (Tune pickled it as the sweep began): the first put takes the file's writes over
        self.__dict__.update({"artifact_uris": {}, **state}, _client=None, fresh=False, pending=[], refused=[], adopt_file=True)
        self._init_threading()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ---- queueing ---------------------------------------------------------------------------

    def put(self, op: dict[str, Any]) -> None:
        """Queue one operation ({"op": kind, "trial": id, ...}; see _send) and send what waits: now,
        or (background) wake the sender thread. Either way the file holds it before this returns."""
        started = time.perf_counter()
        if self.adopt_file:
            self._adopt_file()
        with self._lock:
            self.pending.append(op)
        if self.background:
            self.save()
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_forever, name="ratsweep-mlflow-outbox", daemon=True)
                Outbox._background.append(self)
                self._sender.start()
            self._wake.set()
        else:
            self.flush()
        with Outbox._clock:
            Outbox.waited_s += time.perf_counter() - started

    def _adopt_file(self) -> None:
        """A restored outbox goes on from its file: the writes held there (which `sync` could not send
        before the resume) stay queued ahead of the new ones, and are never saved over."""
        self.adopt_file = False
        if self.path is None or not self.path.exists():
            return
        held = Outbox.load(self.path)
        with self._lock:
            self.pending[:0], self.runs = held.pending, {**held.runs, **self.runs}

    def _send_forever(self) -> None:
        while True:
            self._stop.wait(LINGER_S)  # let more writes gather (stop_senders ends the wait)
            self.flush()
            if self._stop.is_set():
                return
            # pending after a flush: the store is away until retry_at
            self._wake.wait(timeout=max(self.retry_at - time.monotonic(), 0.05) if self.pending else None)
            self._wake.clear()

    @classmethod
    def stop_senders(cls, timeout_s: float = 60) -> None:
        """End every sender thread after one more try at what waits (now, whatever its backoff); what
        is unsent stays pending, and in the file, for a flush by the caller. A sender still sending a
        backlog after `timeout_s` stops after its write in flight (each has a timeout): when this
        returns no sender is left to send what the caller will send from the file."""
        started = time.perf_counter()
        while cls._background:
            outbox = cls._background.pop()
            outbox.retry_at = 0.0
            outbox._stop.set()
            outbox._wake.set()
            outbox._sender.join(timeout_s)
            if outbox._sender.is_alive():
                outbox._halt.set()
                outbox._sender.join()
            outbox._sender = None
            outbox._stop.clear()
            outbox._halt.clear()
            outbox.save()
        with cls._clock:
            cls.waited_s += time.perf_counter() - started

    def spool(self, trial: str, source: Path) -> str:
        """A copy of a trial's artifact folder that lives until it is sent (the checkpoint it came from may not)."""
        if self.folder is None:
            raise RuntimeError("an outbox without a folder cannot hold artifacts")
        target = self.folder / SPOOL_DIR / f"{trial}-{time.time_ns()}"
        shutil.copytree(source, target, copy_function=_link_or_copy)
        return str(target)

    # ---- sending ----------------------------------------------------------------------------

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send pending operations in order until one cannot be sent now; keep trying for up to
        `wait_s` seconds (backing off). True when nothing is pending."""
        deadline = time.monotonic() + wait_s
        while not self._halt.is_set():
            with self._lock:
                if not self.pending:
                    break
                batch = self._batch()
                op = _coalesced([self.pending[i] for i in batch]) if len(batch) > 1 else self.pending[0]
            now = time.monotonic()
            if now < self.retry_at:
                if now >= deadline:
                    break
                # waiting: try again at least every WAITING_RETRY_S, and once more at the deadline
                time.sleep(min(self.retry_at, deadline, now + WAITING_RETRY_S) - now)
            started = time.perf_counter()
            try:
                self._send(op)
            except Exception as e:  # noqa: BLE001  (MLflow raises many types; `transient` sorts them)
                # a refused batch: one write's bad value must not take the others with it, each goes again alone
                split = len(batch) > 1 and not transient(e)
                with self._lock:
                    for i in batch:
                        if not split or self.pending[i]["op"] == "start":
                            self.pending[i]["tried"] = True  # its run may exist now: look for it next time
                        self.pending[i]["alone"] = split
                if split:
                    continue
                if transient(e):
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                        print(f"ratsweep: MLflow store {redacted(self.uri)} cannot take writes ({reason(e)}); holding them and retrying", flush=True)
                    self.retry_at, self.backoff = time.monotonic() + self.backoff, min(2 * self.backoff, MAX_BACKOFF_S)
                    continue
                with self._lock:
                    self.refused.append({**op, "error": reason(e)})
                print(f"ratsweep: MLflow refused a {op['op']} write for trial {op.get('trial')}: {reason(e)}", flush=True)
            finally:
                with Outbox._clock:
                    Outbox.spent_s += time.perf_counter() - started
            with Outbox._clock:
                Outbox.writes += len(batch)
            with self._lock:
                for i in reversed(batch):
                    self.pending.pop(i)
            self._release(op)
            if self.down_since is not None:
                print(f"ratsweep: MLflow store {redacted(self.uri)} is back after {time.monotonic() - self.down_since:.0f} s; "
                      f"sending {len(self.pending) + len(batch)} held writes", flush=True)
                self.down_since = None
            self.retry_at, self.backoff = 0.0, 1.0
        self.save()
        return not self.pending

    def _batch(self) -> list[int]:
        """Which pending operations go out next, as one (indices, under the lock): the first; if it
        is a trial's start or log, with that trial's reports queued after it, up to the trial's next
        other operation or the sweep's end, as many as one request holds. Other trials' operations
        may lie between: the order that matters is each trial's own."""
        first = self.pending[0]
        batch = [0]
        if first["op"] not in ("start", "log") or first.get("alone"):
            return batch
        metrics, params, tags = _entities(first)
        values = {**first.get("params", {}), **(first.get("create") or {}).get("params", {})}
        for i, op in enumerate(self.pending[1:BATCH_LOOKAHEAD], start=1):
            if op["op"] == "finish_sweep":
                break
            if op.get("trial") != first["trial"]:
                continue
            if op["op"] != "log" or op.get("alone"):
                break
            m, p, t = _entities(op)
            if (metrics + m + params + p + tags + t > MAX_BATCH_ENTITIES or params + p > MAX_BATCH_PARAMS_OR_TAGS
                    or tags + t > MAX_BATCH_PARAMS_OR_TAGS):
                break
            if any(values.get(k, v) != v for k, v in op.get("params", {}).items()):
                break  # a param changing value is refused by MLflow: sent alone, it is refused alone, with its reason
            values.update(op.get("params", {}))
            metrics, params, tags = metrics + m, params + p, tags + t
            batch.append(i)
        return batch

    def _release(self, op: dict[str, Any]) -> None:
        if op.get("artifacts"):
            shutil.rmtree(op["artifacts"], ignore_errors=True)

    def run_id(self, trial: str, create: dict[str, Any] | None = None) -> tuple[str, bool]:
        """The trial's run under this sweep's parent: known, found by its tag, or created from `create`
        ({"tags", "params"}, the tags with the creation; the params are the caller's to log); and
        whether it was created now."""
        if trial in self.runs:
            return self.runs[trial], False
        # a new sweep's first try at a trial's run: nothing to find (saves a search per trial)
        may_exist = not self.fresh or create is None or create.get("tried")
        found = may_exist and self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{names.TRIAL}` = '{trial}' and tags.`{names.PARENT}` = '{self.parent_run_id}'",
            max_results=1)
        if found:
            run = found[0]
        elif create is not None:
            run = self.client.create_run(self.experiment_id, tags=create["tags"])
        else:
            raise LookupError(f"no run for trial {trial} under {self.parent_run_id}")  # refused: sent out of order
        run_id = run.info.run_id
        with self._lock:  # save() may be writing the map out from the other thread
            self.runs[trial] = run_id
            self.artifact_uris[run_id] = run.info.artifact_uri
        return run_id, not found

    def _send(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "finish_sweep":  # every trial run still RUNNING ends with the sweep, then the sweep's run
            runs = self.client.search_runs([self.experiment_id], f"tags.`{names.PARENT}` = '{self.parent_run_id}'", max_results=50_000)
            for run in runs:
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, "FAILED" if op["status"] == "FAILED" else "KILLED")
            self.client.set_terminated(self.parent_run_id, op["status"])
            return
        if kind == "outcome":  # the sweep's result on its own run: params once (they cannot change), the rest anew
            logged = self.client.get_run(self.parent_run_id).data.params
            params = {k: v for k, v in op["params"].items() if k not in logged}
            self.client.log_batch(self.parent_run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in op["metrics"]],
                                  params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in op["tags"].items()])
            return
        create = op.get("create")
        run_id, created = self.run_id(op["trial"], create and {**create, "tried": op.get("tried")})
        if kind == "start" and not created:  # a run finished before a resume stays as it was
            if self.client.get_run(run_id).info.status != "FINISHED":
                self.client.update_run(run_id, status="RUNNING")
        if kind in ("start", "log"):  # the run's params (start), and any reports coalesced with it, in one request
            params = {**op.get("params", {}), **(create["params"] if create else {})}
            # a retried or resumed trial reports them again (as may an earlier try of this write): log only the new ones
            if params and not created and (not self.fresh or create or op.get("retried") or op.get("tried")):
                logged = self.client.get_run(run_id).data.params
                params = {k: v for k, v in params.items() if k not in logged}
            metrics, tags = op.get("metrics", ()), op.get("tags", {})
            if params or metrics or tags:
                self.client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in metrics],
                                      params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()])
        elif kind == "end":
            if op.get("unless_finished") and not self.fresh and self.client.get_run(run_id).info.status == "FINISHED":
                return  # completed before a resume: keep it as it was
            if op.get("tags"):
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
            if "text" in op:
                self.client.log_text(run_id, op["text"], op["text_file"])
            if op.get("artifacts"):
                if run_id in self.artifact_uris:  # MlflowClient.log_artifacts would read the run back for it
                    get_artifact_repository(self.artifact_uris[run_id], tracking_uri=self.uri).log_artifacts(op["artifacts"])
                else:
                    self.client.log_artifacts(run_id, op["artifacts"])
                self._log_images(run_id, Path(op["artifacts"]), op.get("step", 0))
            self.client.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown outbox operation {kind!r}")

    def _log_images(self, run_id: str, folder: Path, step: int) -> None:
        """The trial's top-level plots (fit.png, activation_layer1.png, learning_curve.png) also as
        MLflow images keyed by name: the UI's chart view shows them side by side across runs."""
        from PIL import Image  # noqa: PLC0415  (matplotlib's dependency)

        for png in sorted(folder.glob("*.png")):
            try:
                with Image.open(png) as image:
                    picture = image.convert("RGB")
            except (OSError, ValueError):  # not an image PIL reads: it stays a plain artifact
                continue
            self.client.log_image(run_id, picture, key=png.stem, step=step, synchronous=True)

    # ---- keeping ----------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / OUTBOX_FILE

    def save(self) -> None:
        """The file holds what is pending or refused (none: no file), written atomically."""
        if self.path is None:
            return
        with self._lock:  # one writer at a time, and the queue as it is (the sender thread pops from it)
            if not self.pending and not self.refused:
                self.path.unlink(missing_ok=True)
                return
            state = {"uri": self.uri, "experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
                     "runs": self.runs, "pending": self.pending, "refused": self.refused}
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(state))
            os.replace(temporary, self.path)

    @classmethod
    def load(cls, path: Path) -> Outbox:
        state = json.loads(Path(path).read_text())
        outbox = cls(state["uri"], state["experiment_id"], state["parent_run_id"], Path(path).parent)
        outbox.fresh = False  # its runs may exist already
        outbox.pending, outbox.runs = state["pending"], state["runs"]
        outbox.refused = []  # replayed: a refusal may have been the server's mistake
        outbox.pending += [{k: v for k, v in op.items() if k != "error"} for op in state["refused"]]
        return outbox

    def unsent(self) -> str:
        """"12 metrics, 3 statuses (in 5 writes for 2 trials)" for what is pending and refused, or ""."""
        ops = self.pending + self.refused
        if not ops:
            return ""
        total = sum((writes(op) for op in ops), Counter())
        trials = {op["trial"] for op in ops if "trial" in op}
        return ", ".join(f"{n} {kind}" for kind, n in total.items()) + f" (in {len(ops)} writes for {len(trials)} trials" + \
            (f"; {len(self.refused)} refused by the store" if self.refused else "") + ")"
