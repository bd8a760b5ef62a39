"""The outbox's request economy against a real MLflow store (a SQLite file): a trial's run creation
and the reports queued behind it go out as one log_batch, other trials' writes in between keep
their own order, a batch never outgrows one request, and a failed batch is sent again whole, with
nothing doubled."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from mlflow.tracking import MlflowClient

from ratsweep.sweep.names import PARENT as TAG_PARENT
from ratsweep.sweep.names import TRIAL as TAG_TRIAL
from ratsweep.sweep.outbox import MAX_BATCH_ENTITIES, Outbox


@pytest.fixture
def outbox(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("outbox", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    box = Outbox(uri, experiment, parent, tmp_path)
    box._client = mock.Mock(wraps=client)  # the real client, its calls counted
    return box


def start(trial: str, params: dict, parent: str) -> dict:
    """As tracking.MlflowTracking queues it: the run's tags (the parent's among them) and params."""
    return {"op": "start", "trial": trial, "create": {"tags": {TAG_TRIAL: trial, TAG_PARENT: parent}, "params": params}}


def log(trial: str, step: int, **extra) -> dict:
    return {"op": "log", "trial": trial, "metrics": [["loss", 1.0 / step, 0, step]], "params": {}, "tags": {}, **extra}


def calls(box: Outbox) -> dict[str, int]:
    out = {}
    for name, *_ in box._client.method_calls:
        out[name] = out.get(name, 0) + 1
    return out


def test_a_runs_creation_and_its_queued_reports_go_out_in_one_batch(outbox, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "fit.png").write_bytes(b"\x89PNG")
    outbox.pending = [
        start("a", {"lr": "0.1"}, outbox.parent_run_id), start("b", {"lr": "0.2"}, outbox.parent_run_id),
        log("a", 1, params={"num_params": "50"}), log("b", 1), log("a", 2, tags={"device": "cpu"}),
        {"op": "end", "trial": "a", "status": "FINISHED", "artifacts": outbox.spool("a", plots)}, log("b", 2),
        {"op": "finish_sweep", "status": "FINISHED"}, log("b", 3),  # nothing moves past the sweep's end
    ]
    assert outbox.flush()
    # per trial: create_run, one log_batch; a's end (its artifacts uploaded to the URI create_run
    # returned); the sweep's end (its search, two set_terminated); b's last report alone, after the
    # sweep's end as it was queued. Nothing read back from the store.
    assert calls(outbox) == {"create_run": 2, "log_batch": 3, "set_terminated": 3, "search_runs": 1}, calls(outbox)
    client = outbox.client
    run_a, run_b = (client.get_run(outbox.runs[t]) for t in "ab")
    assert run_a.data.params == {"lr": "0.1", "num_params": "50"} and run_a.data.tags["device"] == "cpu"
    assert run_a.data.tags[TAG_PARENT] == outbox.parent_run_id and run_a.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_a.info.run_id, "loss")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run_a.info.run_id)] == ["fit.png"]
    assert not list((outbox.folder / "mlflow_outbox").iterdir())  # the spooled copy is gone once sent
    assert sorted(m.step for m in client.get_metric_history(run_b.info.run_id, "loss")) == [1, 2, 3]
    assert not (outbox.folder / "mlflow_outbox.json").exists()  # nothing held


def test_a_batch_stays_within_one_request(outbox):
    outbox.pending = [start("a", {"lr": "0.1"}, outbox.parent_run_id)] + [
        {"op": "log", "trial": "a", "metrics": [[f"m{k}", 1.0, 0, step] for k in range(30)], "params": {}, "tags": {}}
        for step in range(1, 101)
    ]
    assert outbox.flush()
    batches = [c for c in outbox._client.method_calls if c[0] == "log_batch"]
    sizes = [len(c.kwargs["metrics"]) + len(c.kwargs["params"]) + len(c.kwargs["tags"]) for c in batches]
    assert max(sizes) <= MAX_BATCH_ENTITIES and sum(sizes) == 3000 + 1 and len(batches) == 4, sizes
    history = outbox.client.get_metric_history(outbox.runs["a"], "m0")
    assert [m.step for m in history] == list(range(1, 101))


def test_a_batch_that_fails_after_creating_the_run_is_sent_again_whole_and_once(outbox):
    outbox.pending = [start("a", {"lr": "0.1"}, outbox.parent_run_id), log("a", 1, params={"num_params": "50"}), log("a", 2)]
    real = outbox._client.log_batch
    outbox._client.log_batch = mock.Mock(side_effect=OSError("connection reset"))
    assert not outbox.flush()  # the run exists now, its reports not
    assert len(outbox.pending) == 3 and all(op.get("tried") for op in outbox.pending)
    outbox._client.log_batch = mock.Mock(wraps=real)
    outbox.retry_at = 0.0
    assert outbox.flush()
    client = outbox.client
    [run] = client.search_runs([outbox.experiment_id], f"tags.`{TAG_TRIAL}` = 'a'")  # found again, not created twice
    assert run.data.params == {"lr": "0.1", "num_params": "50"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]


def test_spooled_artifacts_are_links_not_copies(outbox, tmp_path):
    source = tmp_path / "checkpoint" / "artifacts"
    source.mkdir(parents=True)
    (source / "fit.png").write_bytes(b"\x89PNG" + bytes(1000))
    spooled = outbox.spool("a", source)
    assert os.stat(f"{spooled}/fit.png").st_ino == (source / "fit.png").stat().st_ino
    (source / "fit.png").unlink()  # Tune deletes the older checkpoint: the spooled file lives on
    assert os.path.getsize(f"{spooled}/fit.png") == 1004


def test_a_refused_batch_is_sent_again_write_by_write_so_only_the_bad_one_is_set_aside(outbox):
    outbox.pending = [start("a", {"lr": "0.1"}, outbox.parent_run_id), log("a", 1),
                      log("a", 2, params={"bad?key": "1"}),  # not a valid param name: refused (400)
                      log("a", 3, params={"num_params": "50"})]
    assert outbox.flush()
    [refused] = outbox.refused
    assert refused["metrics"][0][3] == 2 and "bad?key" in refused["error"]
    run = outbox.client.get_run(outbox.runs["a"])
    assert run.data.params == {"lr": "0.1", "num_params": "50"}
    assert [m.step for m in outbox.client.get_metric_history(run.info.run_id, "loss")] == [1, 3]


def test_a_param_changing_value_is_not_hidden_by_coalescing(outbox):
    outbox.pending = [start("a", {"lr": "0.1"}, outbox.parent_run_id), log("a", 1, params={"width": "4"}),
                      log("a", 2, params={"width": "8"}), log("a", 3)]
    assert outbox.flush()
    [refused] = outbox.refused  # as if sent one by one: MLflow refuses the changed value, with its reason
    assert refused["params"] == {"width": "8"} and "width" in refused["error"]
    run = outbox.client.get_run(outbox.runs["a"])
    assert run.data.params == {"lr": "0.1", "width": "4"}
    assert [m.step for m in outbox.client.get_metric_history(run.info.run_id, "loss")] == [1, 3]


def test_a_sender_still_sending_when_the_sweep_ends_sends_nothing_twice(outbox, monkeypatch):
    """stop_senders gives a sender with a long backlog timeout_s, then stops it after its write in
    flight: what the driver then sends from the file was never sent by the thread too."""
    import time

    from ratsweep.sweep.outbox import Outbox as OutboxClass

    real_send = OutboxClass._send
    monkeypatch.setattr(OutboxClass, "_send", lambda self, op: (time.sleep(0.05), real_send(self, op))[1])
    outbox.background = True
    outbox.put(start("a", {}, outbox.parent_run_id))
    for step in range(1, 41):  # each alone: a batch would send them all at once
        outbox.put(log("a", step, alone=True))
    OutboxClass.stop_senders(timeout_s=0.3)
    assert outbox._sender is None and outbox.pending  # stopped part way through the backlog
    assert OutboxClass.load(outbox.path).flush()  # as the driver's finishing outbox sends the rest
    run_id = outbox.runs["a"]
    assert sorted(m.step for m in outbox.client.get_metric_history(run_id, "loss")) == list(range(1, 41))


def test_a_restored_outbox_keeps_the_writes_its_file_held(outbox):
    """On --resume the callback's outbox comes from the Tuner's pickle, taken as the sweep began; the
    writes held in the file (sync could not send them) stay queued, ahead of the new ones."""
    import pickle

    pickled = pickle.dumps(outbox)
    held = [start("a", {"lr": "0.1"}, outbox.parent_run_id), log("a", 1), log("a", 2)]
    outbox.pending = list(held)
    outbox.save()  # as the interrupted sweep left it
    restored = pickle.loads(pickled)
    restored.put(log("a", 3))  # sends what waits, in order
    assert not restored.pending and not restored.refused and not restored.path.exists()
    run_id = restored.runs["a"]
    assert [m.step for m in restored.client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    assert restored.client.get_run(run_id).data.params == {"lr": "0.1"}


def test_the_sender_thread_changes_no_process_wide_state(outbox, monkeypatch):
    """os.environ is the process's: the sender thread only reads it (MLflow's one-try settings are
    set once, as the module loads)."""
    import threading

    writes = []

    class Recorded(dict):
        def __setitem__(self, key, value):
            writes.append((threading.current_thread().name, key))
            super().__setitem__(key, value)

        def __delitem__(self, key):
            writes.append((threading.current_thread().name, key))
            super().__delitem__(key)

        def pop(self, key, *default):
            writes.append((threading.current_thread().name, key))
            return super().pop(key, *default)

    monkeypatch.setattr(os, "environ", Recorded(os.environ))
    outbox.background = True
    outbox.put(start("a", {"lr": "0.1"}, outbox.parent_run_id))
    outbox.put(log("a", 1))
    Outbox.stop_senders()
    assert outbox.runs["a"] and not outbox.pending
    assert [w for w in writes if w[0] != threading.main_thread().name] == []
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # one try: the outbox retries, not MLflow
