"""What ratsweep relies on in Ray's private modules (ratsweep/sweep/ray_internals.py), pinned: a Ray
release that changes it fails here, not silently in a user's --resume."""

from __future__ import annotations

import json
import types

import pytest
from ray import tune

from ratsweep.sweep import ray_internals
from ratsweep.sweep.space import UserError


def test_the_installed_ray_is_supported_and_others_are_one_line():
    ray_internals.check_version()  # the one CI installed
    for version in ("2.59.3", "2.61.0", "3.0.0"):
        with pytest.raises(UserError, match=r"^Ray .* is installed; this ratsweep supports Ray >=2\.60,<2\.61 .*pip install") as info:
            ray_internals.check_version(version)
        assert len(str(info.value).splitlines()) == 1
    ray_internals.check_version("2.60.7")


def test_a_trials_saved_state_round_trips_and_its_checkpoint_can_be_replaced(tmp_path):
    """As resume.repoint_lost_checkpoints uses them on an experiment_state file's trial_data."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    old, new = tmp_path / "checkpoint_000001", tmp_path / "checkpoint_000002"
    old.mkdir(), new.mkdir()
    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1))
    metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint=tune.Checkpoint(str(old)), metrics={"loss": 1.0}))
    trial = {"trial_id": "t1", "storage": types.SimpleNamespace(current_checkpoint_index=1)}
    pair = ray_internals.write_trial(trial, metadata)
    assert isinstance(pair[0], str) and isinstance(pair[1], str)

    read, read_metadata = ray_internals.read_trial(pair)
    assert read["trial_id"] == "t1" and read["storage"].current_checkpoint_index == 1  # pickled objects come back
    checkpoint, metrics = ray_internals.latest_checkpoint(read_metadata)
    assert checkpoint.path == str(old) and metrics == {"loss": 1.0}

    ray_internals.replace_latest_checkpoint(read_metadata, tune.Checkpoint(str(new), filesystem=checkpoint.filesystem), {"loss": 0.5})
    state = {"trial_data": [ray_internals.write_trial(read, read_metadata)]}
    again = json.loads(ray_internals.write_state(state))
    _, final = ray_internals.read_trial(again["trial_data"][0])
    checkpoint, metrics = ray_internals.latest_checkpoint(final)
    assert checkpoint.path == str(new) and metrics == {"loss": 0.5}
    assert len(final.checkpoint_manager.best_checkpoint_results) == 1  # the only one: Tune restores from it


def test_a_ray_job_driver_is_told_by_the_variable_the_supervisor_sets(monkeypatch):
    """(test_cluster's `ray job submit` test sees the real supervisor set it.)"""
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert not ray_internals.in_ray_job()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert ray_internals.in_ray_job()
