"""The tracking server going away mid-sweep, with a real `mlflow server` on 127.0.0.1: the sweep goes
on, its writes are held and sent when the server is back, or kept for `ratsweep sync`; every metric
a trial reported ends up on the server, counted against Tune's own record of the reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import ratsweep, reported_steps
from services import MlflowServer

SPACE = """\
name: flaky
experiment: approx
metric: {name: max_abs_err, mode: min}
config: {steps: 8000, report_every: 500, param_budget: 200}
search_space:
  target: {grid: [abs, sin]}
  activation: rational
"""
REPORTS = 8000 // 500


@pytest.fixture
def server(tmp_path):
    running = MlflowServer(tmp_path / "server").start()
    yield running
    running.stop()


def start_sweep(tmp_path: Path, uri: str, **env: str) -> subprocess.Popen:
    (tmp_path / "space.yaml").write_text(SPACE)
    return subprocess.Popen([sys.executable, "-m", "ratsweep", "run", "space.yaml", "--tracking-uri", uri], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **env},
                            start_new_session=True)


def wait_for_first_metric(client: MlflowClient, driver: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None:
        experiment = client.get_experiment_by_name("flaky")
        if experiment and any(r.data.metrics for r in client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")):
            return
        time.sleep(0.5)
    raise AssertionError("no trial reported to the server in time")


def finish(driver: subprocess.Popen) -> str:
    try:
        out, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        raise
    assert driver.returncode == 0, out[-3000:]
    return out


def assert_every_report_on_the_server(tmp_path: Path, uri: str) -> None:
    """Each trial's metric history on the server has exactly the steps Tune recorded for it."""
    [sweep] = (tmp_path / "ratsweep_results").glob("flaky-*")
    reported = reported_steps(sweep, "max_abs_err")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("flaky")
    runs = client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")
    assert sorted(r.data.tags["ratsweep.trial_id"] for r in runs) == sorted(reported)  # one run per trial, none lost
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "max_abs_err"))
        assert steps == reported[run.data.tags["ratsweep.trial_id"]] and len(steps) >= REPORTS, run.info.run_id
        assert run.info.status == "FINISHED" and run.data.params["target"] in ("abs", "sin")
        assert "fit.png" in {a.path for a in client.list_artifacts(run.info.run_id)}  # in the server's store
    [parent] = client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert not (sweep / "mlflow_outbox.json").exists()


def test_a_server_down_mid_sweep_gets_every_write_when_it_returns(tmp_path, server):
    driver = start_sweep(tmp_path, server.uri)
    wait_for_first_metric(MlflowClient(server.uri), driver)
    server.stop()
    time.sleep(3)  # with the restart, several reports of each trial while it is down
    assert driver.poll() is None, "the sweep must go on without its tracking server"
    server.start()
    out = finish(driver)
    assert "cannot take writes" in out and "is back after" in out and "not written to" not in out, out[-3000:]
    assert_every_report_on_the_server(tmp_path, server.uri)


def test_writes_still_held_at_the_end_are_counted_kept_and_synced(tmp_path, server):
    driver = start_sweep(tmp_path, server.uri, RATSWEEP_MLFLOW_FINAL_WAIT_S="1")
    wait_for_first_metric(MlflowClient(server.uri), driver)
    server.stop()
    out = finish(driver)  # the trials finish while the server is down
    [line] = [line for line in out.splitlines() if line.startswith("MLflow: ")]
    assert "metrics" in line and "statuses" in line and "for 2 trials" in line and "ratsweep sync" in line, line
    [sweep] = (tmp_path / "ratsweep_results").glob("flaky-*")
    assert (sweep / "mlflow_outbox.json").exists()
    still_down = ratsweep(tmp_path, "sync", str(sweep), "--wait", "1", check=False)
    assert still_down.returncode == 1 and "could not send" in still_down.stdout, still_down.stdout
    server.start()
    synced = ratsweep(tmp_path, "sync", "flaky")  # by name, under ./ratsweep_results
    assert "sent the held MLflow writes" in synced.stdout, synced.stdout
    assert_every_report_on_the_server(tmp_path, server.uri)
