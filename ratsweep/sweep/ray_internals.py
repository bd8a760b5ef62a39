"""Every use of Ray's private modules, in one place, for the Ray versions CI tests.

ratsweep needs three things Ray does not make public: Tune's own (de)serialisation of a trial's saved
state, to point a trial at the checkpoint that replaced one Tune deleted (resume.repoint_lost_checkpoints);
the variable by which a driver knows it is a Ray job's entrypoint; and the name of the logger of
Tune's background sync. A Ray outside SUPPORTED_RAY is refused in one line before anything starts
(check_version), and tests/test_ray_internals.py pins what each function here relies on, so a new Ray
release fails in CI rather than breaking --resume silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray

from ..errors import UserError

SUPPORTED_RAY = ((2, 60), (2, 61))  # from, up to (excluded): pyproject.toml's pin, what CI installs
SYNC_LOGGER = "ray.train._internal.syncer"  # Tune's background copy of its state folder to storage


def ray_temp_root() -> Path:
    """Where a local Ray puts its sessions, as Ray chooses it: $RAY_TMPDIR, else $TMPDIR, else /tmp; then ray/."""
    return Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"


def check_version(version: str = ray.__version__) -> None:
    """One line naming the supported range when the installed Ray is outside it."""
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    low, high = SUPPORTED_RAY
    if not low <= major_minor < high:
        supported = f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
        raise UserError(f"Ray {version} is installed; this ratsweep supports Ray {supported} (it repairs Tune's "
                        f"saved state with Ray's internals): pip install 'ray[default,tune]{supported}'")


def in_ray_job() -> bool:
    """This driver is a Ray job's entrypoint (the job supervisor sets the variable)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # noqa: PLC0415

    return RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ


def read_trial(pair: list[str]) -> tuple[dict[str, Any], Any]:
    """One entry of an experiment_state file's trial_data: the trial (a dict, its storage inside)
    and its run metadata (checkpoint manager, last result)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata  # noqa: PLC0415
    from ray.tune.utils.serialization import _loads_with_cloudpickle  # noqa: PLC0415

    return _loads_with_cloudpickle(pair[0]), _TrainingRunMetadata.from_json_state(pair[1])


def latest_checkpoint(metadata) -> tuple[Any, dict[str, Any]] | None:
    """The trial's newest registered checkpoint (a tune.Checkpoint) and the metrics it was reported with."""
    manager = metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    return None if latest is None else (latest.checkpoint, latest.metrics)


def replace_latest_checkpoint(metadata, checkpoint, metrics: dict[str, Any]) -> None:
    """The trial's checkpoint manager with `checkpoint` as its only (so latest) checkpoint."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager  # noqa: PLC0415
    from ray.train._internal.session import _TrainingResult  # noqa: PLC0415

    metadata.checkpoint_manager = _CheckpointManager(metadata.checkpoint_manager.checkpoint_config)
    metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=metrics))


def write_trial(trial: dict[str, Any], metadata) -> list[str]:
    """The trial_data entry back, as Tune writes it."""
    from ray.tune.utils.serialization import TuneFunctionEncoder  # noqa: PLC0415

    return [json.dumps(trial, indent=2, cls=TuneFunctionEncoder), metadata.get_json_state()]


def write_state(state: dict[str, Any]) -> str:
    """An experiment_state file's text, as Tune writes it."""
    from ray.tune.utils.serialization import TuneFunctionEncoder  # noqa: PLC0415

    return json.dumps(state, indent=2, cls=TuneFunctionEncoder)
