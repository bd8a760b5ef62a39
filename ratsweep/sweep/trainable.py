"""An experiment as a Ray Tune function trainable.

Each report becomes one Tune result with a checkpoint holding the experiment's state and the
artifacts written so far; a retried or restored trial starts from the latest one. Facts the driver's
MLflow callback needs from the worker (params such as num_params, device and kernel tags, a
divergence) travel inside the result under RESULT_KEY.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

import ratsweep

from ..errors import ConfigError, DataError, Diverged, MissingMetric
from ..rational import cuda, functional
from . import names
from .space import Space

TAGS_ATTRIBUTE = "ratsweep_tags"  # on an exception a trial raised: its environment_tags(), for the driver
RESULT_KEY = "ratsweep"  # result[RESULT_KEY] = {"params": {...}, "tags": {...}, "failure": "...", "artifacts_only": True}
STATE_FILE = "state.pt"
ITERATION_KEY = "training_iteration"  # in each checkpoint's metadata: the Tune iteration that reported it
ARTIFACTS = "artifacts"


ENVIRONMENT_FILE = "environment.json"  # among a trial's artifacts: everything environment_tags leaves out


def environment_tags() -> dict[str, str]:
    """Where this trial runs, as tags a user reads on its MLflow run: ratsweep's version, the device
    (and CUDA's version only where a GPU runs it), the Ray node."""
    on_gpu = torch.cuda.is_available()
    tags = {
        names.VERSION: ratsweep.__version__,
        names.DEVICE: torch.cuda.get_device_name() if on_gpu else f"cpu ({platform.processor() or platform.machine()})",
        names.NODE: ray.get_runtime_context().get_node_id(),
    }
    if on_gpu:
        tags[names.CUDA] = torch.version.cuda or "none"
    return tags


def environment() -> dict[str, str]:
    """The rest of what ran the trial (environment.json): versions, host, threads."""
    import numpy  # noqa: PLC0415

    return {**environment_tags(), "torch": torch.__version__, "torch.cuda": torch.version.cuda or "none",
            "numpy": numpy.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(), "torch.threads": str(torch.get_num_threads())}


def kernel_tags() -> dict[str, str]:
    """Which rational backends actually ran in this trial so far ("none" if no rational did), and
    CuPy's version where the CUDA kernels ran: a table never mixes kernels unknowingly."""
    used = functional.backends_used()
    tags = {names.KERNEL_BACKEND: ",".join(used) or "none"}
    if "cuda" in used:
        tags[names.CUPY] = cuda.version()
    return tags


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` with its size and modification time."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file()}


class TuneSession:
    """The Session an experiment sees inside a Tune trial."""

    def __init__(self, smoke: bool, data_dir: str, restored: dict | None, artifact_dir: Path, metric: str, iteration: int = 0):
        self.smoke, self.data_dir, self.restored, self.artifact_dir = smoke, Path(data_dir), restored, artifact_dir
        self.metric = metric
        self.iteration = iteration  # Tune's count of this trial's results, carried across restores
        self._pending: dict[str, Any] = {"params": {}, "tags": environment_tags()}
        self.last_metrics: dict[str, Any] = {}
        self._last_state: dict | None = None
        self._reported_files: dict[str, tuple[int, int]] = {}
        self._kernel_tags: dict[str, str] = {}

    def log_params(self, **params):
        self._pending.setdefault("params", {}).update(params)

    def report(self, metrics, state=None, failure: str | None = None):
        if self.metric not in metrics:
            reported = ", ".join(sorted(metrics)) or "nothing"
            raise MissingMetric(f"the experiment reported {reported} but not {self.metric!r}, the sweep's metric")
        self.last_metrics = dict(metrics)
        if failure:
            self._pending["failure"] = failure
        self._send(dict(metrics), state)

    def flush_artifacts(self) -> None:
        """Files written to the artifact dir after the last report (plots saved at the end of `run`)
        travel with one more result, flagged so that no metric is logged twice."""
        if self.last_metrics and _listing(self.artifact_dir) != self._reported_files:
            self._pending["artifacts_only"] = True
            self._send(dict(self.last_metrics), self._last_state)

    def _send(self, result: dict[str, Any], state: dict | None) -> None:
        kernels = kernel_tags()
        if kernels != self._kernel_tags:
            self._pending.setdefault("tags", {}).update(kernels)
            self._kernel_tags = kernels
        if self._pending:
            result[RESULT_KEY], self._pending = self._pending, {}
        self._last_state = state if state is not None else self._last_state
        self._reported_files = _listing(self.artifact_dir)
        with tempfile.TemporaryDirectory(prefix="ratsweep-checkpoint-") as tmp:
            if self._last_state is not None:
                torch.save(self._last_state, os.path.join(tmp, STATE_FILE))
            if self._reported_files:
                shutil.copytree(self.artifact_dir, os.path.join(tmp, ARTIFACTS))
            has_content = self._last_state is not None or bool(self._reported_files)
            checkpoint = tune.Checkpoint.from_directory(tmp) if has_content else None
            self.iteration += 1
            if checkpoint is not None:  # lets --resume restore from it alone (resume.repoint_lost_checkpoints)
                checkpoint.set_metadata({ITERATION_KEY: self.iteration})
            tune.report(result, checkpoint=checkpoint)


def restored_state() -> tuple[dict | None, int]:
    """The experiment state of the checkpoint Tune restores this trial from, and its iteration."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, 0
    iteration = checkpoint.get_metadata().get(ITERATION_KEY, 0)
    with checkpoint.as_directory() as directory:
        path = os.path.join(directory, STATE_FILE)
        # CPU first: the trial may resume on another node, or without the GPU it was saved from;
        # load_state_dict then moves each part where the model lives.
        state = torch.load(path, weights_only=False, map_location="cpu") if os.path.exists(path) else None
    return state, iteration


def checkpoint_iteration(directory: Path) -> int | None:
    """The iteration a checkpoint folder in storage was reported at, or None if it is incomplete (its
    copy into storage cut short) or was not written by this trainable."""
    try:
        iteration = json.loads((directory / ".metadata.json").read_text())[ITERATION_KEY]  # tune.Checkpoint.set_metadata's file
    except (OSError, ValueError, KeyError):
        return None
    state = directory / STATE_FILE
    # torch.save writes a zip: a truncated one has no end-of-central-directory record
    return iteration if not state.exists() or zipfile.is_zipfile(state) else None


@contextlib.contextmanager
def torch_flags_kept() -> Iterator[None]:
    """Torch's process-wide flags (threads, TF32, cuDNN, determinism, default dtype) put back as the
    trial found them: Tune reuses a worker for the next trial (reuse_actors), which must not inherit
    what this one's config set."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.get_num_threads(), cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
             torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype())
    try:
        yield
    finally:
        threads, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32, precision, deterministic, dtype = saved
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_default_dtype(dtype)


def make_trainable(space: Space, smoke: bool, data_dir: str, flush_denormal: bool = True):
    """The function Tune runs per trial: config in, reports out; divergence or missing data recorded,
    not retried. With `flush_denormal`, CPU trials flush subnormal floats to zero: training that
    drives values towards zero otherwise runs 3-20x slower on x86 (benchmarks/denormals.py)."""
    experiment_name, data_dir = space.experiment, os.path.abspath(data_dir)

    def trainable(trial_config: dict[str, Any]) -> None:
        from .. import registry  # noqa: PLC0415  (imported in the worker: loads plugins there)

        logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per report

        experiment = registry.get_experiment(experiment_name)
        config = space.build_config(trial_config)
        torch.set_flush_denormal(flush_denormal)  # per worker process: CPU arithmetic only
        functional.reset_backends_used()  # a reused actor ran other trials before
        with tempfile.TemporaryDirectory(prefix="ratsweep-artifacts-") as artifacts, torch_flags_kept():
            state, iteration = restored_state()
            Path(artifacts, ENVIRONMENT_FILE).write_text(json.dumps(environment(), indent=2))
            session = TuneSession(smoke, data_dir, state, Path(artifacts), space.metric, iteration)
            try:
                experiment.run(config, session)
                session.flush_artifacts()
            except (Diverged, DataError, MissingMetric, ConfigError) as e:  # e.g. a model with nothing to swap
                # Deterministic: a retry would fail the same way. Record why and end the trial normally.
                metrics = {**session.last_metrics, space.metric: float("nan")}
                session.report(metrics, failure=f"diverged: {e}" if isinstance(e, Diverged) else str(e))
            except Exception as e:
                # a trial failing before its first report still says where it ran (the error travels
                # pickled to the driver; its type and message stay the experiment's own)
                setattr(e, TAGS_ATTRIBUTE, environment_tags() | kernel_tags())
                raise

    trainable.__name__ = experiment_name  # trial names read "approx_1a2b3c4d"
    return tune.with_resources(trainable, {"cpu": space.resources["cpu"], "gpu": space.resources["gpu"]})
