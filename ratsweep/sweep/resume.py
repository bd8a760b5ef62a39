"""A sweep's folder and what --resume needs from it: the folder reserved for a new sweep, the latest
restorable one of a name, and Tune's saved state repaired where a killed driver left it damaged or
naming a checkpoint already replaced."""

from __future__ import annotations

import glob
import itertools
import json
import shutil
from pathlib import Path

from ray import tune

from ..errors import SpaceError
from . import ray_internals
from .trainable import ITERATION_KEY, checkpoint_iteration


SWEEP_FILE = "ratsweep_sweep.json"  # in the Tune experiment folder: what --resume needs to continue


def latest_sweep(storage: Path, name: str) -> Path | None:
    """The newest restorable Tune experiment folder of this sweep name."""
    candidates = sorted(storage.glob(f"{glob.escape(name)}-*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for marker in candidates:
        if tune.Tuner.can_restore(str(marker.parent)):
            return marker.parent
    return None


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
    ray_temp = ray_internals.ray_temp_root()
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
