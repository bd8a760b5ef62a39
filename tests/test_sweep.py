"""The `ratsweep` CLI end to end: real Ray Tune sweeps on local Ray, tracked in a SQLite MLflow store.

Each test runs the CLI in a subprocess in its own folder (as a user would), then reads MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ratsweep.sweep.space import load

PLUGIN = Path(__file__).parent / "plugin"


def ratsweep(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300, check: bool = True):
    proc = subprocess.run(
        [sys.executable, "-m", "ratsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ratsweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def mlflow_client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")


def trial_runs(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("ratsweep.kind") == "trial"], [r for r in runs if r.data.tags.get("ratsweep.kind") == "sweep"]


def artifacts(client: MlflowClient, run) -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id)}


SMOKE_SPACE = """\
name: e2e_approx
experiment: approx
metric: {name: max_abs_err, mode: min}
search_space:
  target: {grid: [abs]}
  activation: {grid: [relu, rational]}
  rational.degrees: {grid: [[3, 2]]}
  seed: {grid: [0, 1]}
---
name: e2e_digits
experiment: digits
metric: {name: best_test_acc, mode: max}
config: {model: digits_mlp}
search_space:
  activation: {grid: [relu, rational]}
"""


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    (cwd / "space.yaml").write_text(SMOKE_SPACE)
    proc = ratsweep(cwd, "run", "space.yaml", "--smoke")
    return cwd, proc


def test_run_lands_every_trial_in_mlflow(smoke_sweep):
    cwd, proc = smoke_sweep
    assert "== e2e_approx: 4 trials" in proc.stdout and "== e2e_digits: 2 trials" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    client = mlflow_client(cwd)
    approx, [approx_sweep] = trial_runs(client, "e2e_approx")
    assert len(approx) == 4 and {r.info.status for r in approx} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in approx} == {approx_sweep.info.run_id}
    assert "search_space.yaml" in artifacts(client, approx_sweep)
    for run in approx:
        params, tags = run.data.params, run.data.tags
        assert params["target"] == "abs" and int(params["num_params"]) > 0
        assert ("rational.degrees" in params) == (params["activation"] == "rational")  # what applies, only
        assert {"max_abs_err", "mse"} <= set(run.data.metrics)
        assert tags["kernel_backend"] == "cpu" and tags["torch"] and tags["ray.node_id"] and tags["device"].startswith("cpu")
        assert len(client.get_metric_history(run.info.run_id, "max_abs_err")) >= 2  # every report, not just the last
        expected = {"fit.png"} | ({"rational_1.png"} if params["activation"] == "rational" else set())
        assert expected <= artifacts(client, run)
    digits, _ = trial_runs(client, "e2e_digits")
    assert len(digits) == 2
    for run in digits:
        assert {"train_loss", "test_acc", "best_test_acc", "epoch_time_s"} <= set(run.data.metrics)
        assert "learning_curve.png" in artifacts(client, run)


def test_best_reads_mlflow(smoke_sweep):
    cwd, _ = smoke_sweep
    entries = json.loads(ratsweep(cwd, "best", "e2e_approx", "--top", "3", "--format", "json").stdout)
    assert len(entries) == 3 and all(set(e) == {"run_id", "metric", "value", "config"} for e in entries)
    values = [e["value"] for e in entries]
    assert values == sorted(values) and entries[0]["metric"] == "max_abs_err"
    client = mlflow_client(cwd)
    assert client.get_run(entries[0]["run_id"]).data.metrics["max_abs_err"] == values[0]

    rerun = cwd / "best.yaml"
    rerun.write_text(ratsweep(cwd, "best", "e2e_approx", "--format", "yaml").stdout)
    [space] = load(str(rerun))
    assert space.experiment == "approx" and space.trials() == [{}]
    assert {k: v for k, v in space.config.items()} == entries[0]["config"]


def test_report_tables_and_plots(smoke_sweep):
    cwd, _ = smoke_sweep
    md = ratsweep(cwd, "report", "e2e_approx", "--plots", "plots").stdout
    rows = [line for line in md.splitlines() if line.startswith("| ") and ("relu" in line or "rational" in line)]
    assert len(rows) == 2, md  # grouped by activation (degrees fixed), averaged over the two seeds
    assert all("| 2 |" in row for row in rows) and sum("**" in row for row in rows) == 1
    assert "±" in md
    assert (cwd / "plots" / "learning_curves.png").stat().st_size > 5000
    assert list((cwd / "plots").glob("*rational*/rational_1.png"))
    csv_lines = ratsweep(cwd, "report", "e2e_approx", "--format", "csv", "--group-by", "activation").stdout.splitlines()
    assert csv_lines[0] == "activation,max_abs_err_mean,max_abs_err_std,n,minutes" and len(csv_lines) == 3
    latex = ratsweep(cwd, "report", "e2e_approx", "--format", "latex").stdout
    assert latex.startswith(r"\begin{tabular}") and r"\textbf{" in latex


def test_unknown_sweep_name_is_one_line(smoke_sweep):
    cwd, _ = smoke_sweep
    proc = ratsweep(cwd, "best", "e2e_aprox", check=False)
    assert proc.returncode == 2 and "did you mean 'e2e_approx'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_gpu_request_on_a_cluster_without_gpus_starts_nothing(tmp_path):
    (tmp_path / "gpu.yaml").write_text("name: g\nexperiment: approx\nmetric: {name: mse, mode: min}\nresources: {gpu: 0.25}\n")
    proc = ratsweep(tmp_path, "run", "gpu.yaml", "--smoke", check=False, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr
    assert "gpu.yaml: resources.gpu: expected 0 (this cluster has no GPU), got 0.25" in proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_plugin_package_is_discovered_and_swept(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(PLUGIN)],
        check=True, capture_output=True, timeout=300,
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = ratsweep(tmp_path, "list", env=env).stdout
    assert "toy" in listing and "digits_tiny" in listing and "ratsweep_toy_plugin" in listing
    (tmp_path / "toy.yaml").write_text(textwrap.dedent("""\
        name: toy_sweep
        experiment: toy
        metric: {name: mse, mode: min}
        max_failures: 1
        search_space:
          activation: {grid: [relu, rational]}
          fail: {grid: [false, true]}
          diverge: {grid: [false, true]}
        ---
        name: toy_digits
        experiment: digits
        metric: {name: best_test_acc, mode: max}
        config: {model: digits_tiny}
        """))
    proc = ratsweep(tmp_path, "run", "toy.yaml", "--smoke", env=env)
    assert "== toy_sweep: 8 trials" in proc.stdout
    client = mlflow_client(tmp_path)
    runs, _ = trial_runs(client, "toy_sweep")
    assert len(runs) == 8  # a retried trial keeps its run: no duplicates
    for run in runs:
        fail, diverge = run.data.params["fail"] == "True", run.data.params["diverge"] == "True"
        failure = run.data.tags.get("ratsweep.failure", "")
        if fail:
            assert run.info.status == "FAILED" and "toy: asked to fail" in failure
            assert run.data.tags.get("ratsweep.retries") == "1"
        elif diverge:
            assert run.info.status == "FAILED" and failure.startswith("diverged: loss is nan at report 1")
        else:
            assert run.info.status == "FINISHED" and not failure and len(client.get_metric_history(run.info.run_id, "mse")) == 2
    [digits] = trial_runs(client, "toy_digits")[0]
    assert digits.info.status == "FINISHED" and digits.data.params["model"] == "digits_tiny"


def test_resume_after_killing_the_driver(tmp_path):
    (tmp_path / "slow.yaml").write_text(textwrap.dedent("""\
        name: resumable
        experiment: approx
        metric: {name: max_abs_err, mode: min}
        config: {steps: 1200, report_every: 200, param_budget: 200}
        search_space:
          target: {grid: [abs, step, sin]}
          activation: {grid: [relu, rational]}
        """))
    args = [sys.executable, "-m", "ratsweep", "run", "slow.yaml", "--max-concurrent", "1"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = mlflow_client(tmp_path)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(1)
            experiment = (tmp_path / "mlruns.db").exists() and client.get_experiment_by_name("resumable")
            if experiment:
                runs = client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")
                if sum(r.info.status == "FINISHED" for r in runs) >= 2:
                    break
        else:
            pytest.fail("the sweep did not finish two trials in time")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-sweep
        driver.wait()
    finished_before = {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}
    assert len(finished_before) < 6

    ratsweep(tmp_path, "run", "slow.yaml", "--resume")
    runs, sweeps = trial_runs(client, "resumable")
    assert len(sweeps) == 1  # the same sweep continued, not a second one
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({(r.data.params["target"], r.data.params["activation"]) for r in runs}) == 6
    for run in runs:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "max_abs_err")}
        assert steps == set(range(1, 7)), steps  # 1200 steps / 200 per report, each report once
        if run.info.run_id in finished_before:  # finished trials were not run again
            assert run.info.end_time == finished_before[run.info.run_id]
