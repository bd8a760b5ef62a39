"""A team's setup with real parts on this machine, started as the README's cluster section starts
them: PostgreSQL, `ratsweep server` (MLflow) on it, a Ray cluster of a head and a worker node
(`ray start --block`, token auth), sweeps sent with `ratsweep submit`. Then its faults: a trial that
raises and one that goes NaN, the worker node dying mid-sweep, the tracking server stopped and
started again; no run lost or doubled, every report step on the server once."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import ratsweep, reported_steps, trial_runs
import services
from services import BIN, PLUGIN, REPO, MlflowServer, RayCluster, install_plugin


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(cluster, tracking server, shared storage) for the module's tests."""
    folder = tmp_path_factory.mktemp("team")
    with services.team(folder, extra_env=install_plugin(folder / "site")) as (cluster, server):
        yield cluster, server, folder / "results"


def submit(cluster: RayCluster, server: MlflowServer, storage: Path, folder: Path, space: str, project: Path | None = None) -> str:
    """`ratsweep submit` from a project folder (default: an empty one) of a space file outside it, as a
    user might; the job id."""
    if project is None:
        project = folder / "project"
        project.mkdir()
    (folder / "space.yaml").write_text(space)  # staged into the job by submit
    # the installed command, as a user types it (`python -m` would import a `ratsweep/` in the folder)
    proc = subprocess.run([str(BIN / "ratsweep"), "submit", str(folder / "space.yaml"), "--address", cluster.address,
                           "--tracking-uri", server.uri, "--storage", str(storage)],
                          cwd=project, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = proc.stdout.split()[2]  # "submitted job raysubmit_... ; follow it with: ..."
    assert f"ray job logs --follow --address {cluster.address} {job}" in proc.stdout
    return job


SPREAD = """\
name: spread
experiment: toy
metric: {name: mse, mode: min}
max_failures: 1
config: {steps: 400}
search_space:
  - {activation: {grid: [relu, rational]}, seed: {grid: [0, 1]}, fail: false, diverge: false}
  - {activation: rational, seed: 0, fail: true, diverge: false}
  - {activation: rational, seed: 0, fail: false, diverge: true}
"""


def test_a_submitted_sweep_runs_on_both_nodes_records_its_failures_and_reads_back(team, tmp_path):
    cluster, server, storage = team
    logs, status = cluster.wait_for_job(submit(cluster, server, storage, tmp_path, SPREAD))
    assert "== spread: 6 trials" in logs, logs[-3000:]
    assert "spread: 4 finished, 1 failed, 1 diverged" in logs, logs[-3000:]
    assert "failed" in status.lower()  # exit 3: some trials failed, the sweep itself completed

    client = MlflowClient(server.uri)
    runs, _ = trial_runs(client, "spread")
    assert len(runs) == 6 and len({r.data.tags["ratsweep.trial_id"] for r in runs}) == 6  # one run per trial
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # the head and the worker both ran trials
    for run in runs:
        failure = run.data.tags.get("ratsweep.failure", "")
        if run.data.params["fail"] == "True":
            assert run.info.status == "FAILED" and "toy: asked to fail" in failure and run.data.tags["ratsweep.retries"] == "1"
        elif run.data.params["diverge"] == "True":
            assert run.info.status == "FAILED" and failure.startswith("diverged: loss is nan")
        else:
            assert run.info.status == "FINISHED" and not failure
            # artifacts go through the server into its store, not to a path on whichever node ran the trial
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
            assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"final.txt"}
            assert list((server.folder / "artifacts").rglob(f"{run.info.run_id}/artifacts/final.txt"))

    best = ratsweep(tmp_path, "best", "spread", "--tracking-uri", server.uri).stdout  # read back from the server
    winner = min((r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.data.metrics["mse"])
    assert f"run {winner.info.run_id}" in best.splitlines()[0] and "fail=False" in best, best


FOUR = """\
name: {name}
experiment: {experiment}
metric: {{name: {metric}, mode: min}}
config: {config}
search_space:
  seed: {{grid: [0, 1, 2, 3]}}
"""
# long enough (several seconds each) that a second actor starts on the other node before one actor has run them all
APPROX = {"experiment": "approx", "metric": "max_abs_err", "config": "{steps: 16000, report_every: 4000, param_budget: 50}"}


def on_both_nodes(client: MlflowClient, name: str) -> None:
    runs, [sweep] = trial_runs(client, name)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"} and sweep.info.status == "FINISHED"
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # the head and the worker both ran trials


def checkout(tmp_path: Path) -> tuple[Path, dict]:
    """The repository root of a source checkout: its own `ratsweep/`, without the submitted space."""
    return REPO, APPROX


def plugin_project(tmp_path: Path) -> tuple[Path, dict]:
    """A project folder holding the source of the plugin whose experiment it sweeps."""
    project = tmp_path / "plugin-project"
    shutil.copytree(PLUGIN, project, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return project, {"experiment": "toy", "metric": "mse", "config": "{steps: 12000}"}


def foreign_ratsweep(tmp_path: Path) -> tuple[Path, dict]:
    """A folder with a `ratsweep/` of its own (notes, and a module that is not the package)."""
    project = tmp_path / "notes-project"
    (project / "ratsweep").mkdir(parents=True)
    (project / "ratsweep" / "__init__.py").write_text("raise ImportError('the folder`s own ratsweep/ was imported')\n")
    (project / "ratsweep" / "notes.txt").write_text("what we tried\n")
    return project, APPROX


@pytest.mark.parametrize("folder", [checkout, plugin_project, foreign_ratsweep])
def test_submit_runs_the_staged_package_from_any_folder(team, tmp_path, folder):
    cluster, server, storage = team
    if cluster.alive_nodes() < 2:
        cluster.add_worker()
    project, fields = folder(tmp_path)
    name = f"from_{folder.__name__}"
    logs, status = cluster.wait_for_job(submit(cluster, server, storage, tmp_path, FOUR.format(name=name, **fields), project))
    assert "succeeded" in status.lower() and f"{name}: 4 finished" in logs, logs[-3000:]
    on_both_nodes(MlflowClient(server.uri), name)


def ray_job_submit(cluster: RayCluster, project: Path, job: str, *run_args: str, env_vars: dict | None = None) -> None:
    """Ray's own CLI, as the README shows it: the folder as the working dir, `ratsweep run` the entrypoint."""
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--submission-id", job, "--working-dir",
                    str(project), "--no-wait", *runtime_env, "--", "ratsweep", "run", *run_args],
                   env=cluster.env, check=True, capture_output=True, timeout=120)


def test_ray_job_submit_of_ratsweep_run_uses_the_cluster_checks_it_and_stops_cleanly(team, tmp_path):
    cluster, server, storage = team
    if cluster.alive_nodes() < 2:
        cluster.add_worker()
    project, suffix = tmp_path / "project", tmp_path.name[-8:]
    project.mkdir()
    (project / "four.yaml").write_text(FOUR.format(name="by_ray_cli", **APPROX))
    (project / "gpu.yaml").write_text(FOUR.format(name="wants_gpu", **APPROX) + "resources: {gpu: 1}\n")
    (project / "slow.yaml").write_text(SLOW.replace("enduring", "stopped_by_ray"))
    lasting = ["--tracking-uri", server.uri, "--storage", str(storage)]

    ray_job_submit(cluster, project, f"gpu-{suffix}", "gpu.yaml", *lasting)
    ray_job_submit(cluster, project, f"temp-{suffix}", "four.yaml", "--tracking-uri", server.uri)  # storage in the job's folder
    ray_job_submit(cluster, project, f"four-{suffix}", "four.yaml", *lasting)
    logs, status = cluster.wait_for_job(f"gpu-{suffix}")  # checked against the job's cluster, not a local Ray
    assert "failed" in status.lower() and "resources.gpu: expected 0 (this cluster has no GPU), got 1" in logs, logs[-2000:]
    logs, status = cluster.wait_for_job(f"temp-{suffix}")
    assert "failed" in status.lower() and "--storage: expected an absolute path" in logs, logs[-2000:]
    logs, status = cluster.wait_for_job(f"four-{suffix}")
    assert "succeeded" in status.lower() and "by_ray_cli: 4 finished" in logs, logs[-3000:]
    client = MlflowClient(server.uri)
    on_both_nodes(client, "by_ray_cli")

    # `ray job stop` sends SIGTERM, and SIGKILL RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3) later
    job = f"slow-{suffix}"
    ray_job_submit(cluster, project, job, "slow.yaml", *lasting, env_vars={"RAY_JOB_STOP_WAIT_TIME_S": "120"})
    deadline = time.time() + 240
    while time.time() < deadline:  # trials running and reporting
        experiment = client.get_experiment_by_name("stopped_by_ray")
        running = experiment and [r for r in client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")
                                  if r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "max_abs_err")]
        if running:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the sweep did not get a trial going")
    subprocess.run([str(BIN / "ray"), "job", "stop", "--address", cluster.address, job], env=cluster.env, check=True,
                   capture_output=True, timeout=120)
    logs, status = cluster.wait_for_job(job)
    assert "stopped" in status.lower(), status
    hint = f"continue with: ratsweep run slow.yaml --tracking-uri {server.uri} --storage {storage} --resume"
    assert hint in logs, logs[-3000:]
    runs, [sweep] = trial_runs(client, "stopped_by_ray")
    assert sweep.info.status == "KILLED" and runs and "RUNNING" not in {r.info.status for r in runs}, [r.info.status for r in runs]


SLOW = """\
name: enduring
experiment: approx
metric: {name: max_abs_err, mode: min}
config: {steps: 8000, report_every: 500, param_budget: 200}
search_space:
  target: {grid: [abs, sin]}
  activation: {grid: [relu, rational]}
"""
REPORTS = 8000 // 500


def test_a_dead_worker_node_and_a_restarted_tracker_lose_no_run_and_no_report(team, tmp_path):
    cluster, server, storage = team
    if cluster.alive_nodes() < 2:
        cluster.add_worker()
    job = submit(cluster, server, storage, tmp_path, SLOW)
    client = MlflowClient(server.uri)
    deadline = time.time() + 240
    while time.time() < deadline:  # both nodes running a trial that has reported twice
        experiment = client.get_experiment_by_name("enduring")
        running = experiment and [r for r in client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")
                                  if r.info.status == "RUNNING" and len(client.get_metric_history(r.info.run_id, "max_abs_err")) >= 2]
        if running and len({r.data.tags["ray.node_id"] for r in running}) == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the sweep did not get a trial going on each node")
    cluster.kill_worker()
    server.stop()
    deadline = time.time() + 120
    while "cannot take writes" not in cluster.job_logs(job):  # the driver may be busy with the dead node a while
        assert time.time() < deadline, "the driver never found the tracking server gone"
        time.sleep(1)
    time.sleep(3)  # several reports held while the tracker is away
    server.start()
    logs, status = cluster.wait_for_job(job)
    assert "succeeded" in status.lower() and "enduring: 4 finished" in logs, logs[-3000:]
    assert "cannot take writes" in logs and "is back after" in logs and "not written to" not in logs, logs[-3000:]

    [sweep] = storage.glob("enduring-*")
    reported = reported_steps(sweep, "max_abs_err")  # a restarted trial's result.json may repeat a step: Tune's, not MLflow's
    runs, _ = trial_runs(client, "enduring")
    assert sorted(r.data.tags["ratsweep.trial_id"] for r in runs) == sorted(reported)  # none lost, none doubled
    restarted = [r for r in runs if "ratsweep.retries" in r.data.tags]
    assert restarted, "no trial was running on the worker node when it died"
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "max_abs_err")]
        assert sorted(steps) == sorted(set(reported[run.data.tags["ratsweep.trial_id"]])) == [500 * k for k in range(1, REPORTS + 1)], run.info.run_id
        assert run.info.status == "FINISHED"
    for run in restarted:  # went on from its checkpoint in the shared storage, not from the start
        [trial] = sweep.glob(f"*_{run.data.tags['ratsweep.trial_id']}_*")
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert any(row["iterations_since_restore"] < row["training_iteration"] for row in rows), run.info.run_id
