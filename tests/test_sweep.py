"""The `ratsweep` CLI end to end: real Ray Tune sweeps on local Ray, tracked in a SQLite MLflow store.

Each test runs the CLI in a subprocess in its own folder (as a user would), then reads MLflow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from helpers import artifacts, mlflow_client, ratsweep, trial_runs
from services import free_port, install_plugin
from synthetic_data import write_cifar10, write_minari, write_tinyimagenet

from ratsweep import registry
from ratsweep.errors import EXIT_TRIALS_FAILED
from ratsweep.sweep.space import load

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
    assert "Pre-set value" not in proc.stdout + proc.stderr  # relu trials hold None for rational.degrees, quietly
    client = mlflow_client(cwd)
    approx, [approx_sweep] = trial_runs(client, "e2e_approx")
    assert len(approx) == 4 and {r.info.status for r in approx} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in approx} == {approx_sweep.info.run_id}
    assert {"search_space.yaml", "plan.json", "report"} <= artifacts(client, approx_sweep)
    sweep_tags = approx_sweep.data.tags
    assert sweep_tags["ratsweep.version"] and "ratsweep.provider.ratsweep" not in sweep_tags  # one version tag
    assert (sweep_tags["ratsweep.sweep"], sweep_tags["ratsweep.smoke"]) == ("e2e_approx", "true")
    assert client.get_experiment_by_name("e2e_approx").tags["mlflow.experimentKind"] == "custom_model_development"
    assert "e2e_approx: 4 finished" in proc.stdout
    for run in approx:
        params, tags = run.data.params, run.data.tags
        assert params["target"] == "abs" and int(params["num_params"]) > 0
        assert (params["steps"], params["report_every"]) == ("60", "20")  # what the smoke run ran, not 2000/100
        assert run.info.run_name == f"abs · {'relu' if params['activation'] == 'relu' else 'rational(3,2)'} · s{params['seed']}"
        assert {k: tags[k] for k in ("ratsweep.sweep", "ratsweep.sweep_id", "ratsweep.smoke", "ratsweep.version")} == {
            "ratsweep.sweep": "e2e_approx", "ratsweep.sweep_id": sweep_tags["ratsweep.sweep_id"], "ratsweep.smoke": "true",
            "ratsweep.version": sweep_tags["ratsweep.version"]}
        assert ("rational.degrees" in params) == (params["activation"] == "rational")  # what applies, only
        assert {"max_abs_err", "mse"} <= set(run.data.metrics)
        assert tags["kernel_backend"] == ("cpu" if params["activation"] == "rational" else "none")  # what ran
        assert tags["ray.node_id"] and tags["device"].startswith("cpu")
        assert not {"cupy", "cuda", "torch", "hostname", "ratsweep.provider.ratsweep"} & set(tags)  # CPU: no CUDA tags; the rest in environment.json
        # every report, at the experiment's own step (60 steps, a report every 20), not the report count
        assert [m.step for m in client.get_metric_history(run.info.run_id, "max_abs_err")] == [20, 40, 60]
        plots = {name.removesuffix(".png") for name in artifacts(client, run) if name.endswith(".png")}
        assert "fit" in plots and ("activation_layer1" in plots) == (params["activation"] == "rational")
        assert {"environment.json", "images"} <= artifacts(client, run)
        images = {a.path.split("/")[-1].split("+step+")[0] for a in client.list_artifacts(run.info.run_id, "images")}
        assert images == plots  # also as MLflow images (the chart view compares them across runs)
        assert {a.path.split("+step+")[1].split("+")[0] for a in client.list_artifacts(run.info.run_id, "images")} == {"60"}
        with tempfile.TemporaryDirectory() as tmp:
            environment = json.loads(Path(client.download_artifacts(run.info.run_id, "environment.json", tmp)).read_text())
        assert environment["torch"] and environment["hostname"] and environment["device"] == tags["device"]
    # the sweep's run ends with its outcome: the best trial's value, searched config and name, a note
    # with the top trials best first, and the report's table and plots
    best = min(approx, key=lambda r: r.data.metrics["max_abs_err"])
    assert approx_sweep.data.metrics["best.max_abs_err"] == best.data.metrics["max_abs_err"]
    assert approx_sweep.data.params["best.activation"] == best.data.params["activation"]
    assert approx_sweep.data.params["best.seed"] == best.data.params["seed"]
    assert approx_sweep.data.tags["ratsweep.best_run"] == best.info.run_id
    note = approx_sweep.data.tags["mlflow.note.content"]
    ranked = sorted(approx, key=lambda r: r.data.metrics["max_abs_err"])
    table = [line for line in note.splitlines() if line.startswith("| ") and "rank" not in line]
    assert [line.split(" | ")[1] for line in table] == [r.info.run_name for r in ranked]
    assert "ratsweep best e2e_approx --include-smoke --format yaml > best.yaml" in note
    assert {"report/report.md", "report/learning_curves.png"} <= {a.path for a in client.list_artifacts(approx_sweep.info.run_id, "report")}
    link = next(line for line in proc.stdout.splitlines() if line.startswith("Runs, best first: "))
    sweep_id = sweep_tags["ratsweep.sweep_id"]
    assert link.endswith(f"/#/experiments/{approx_sweep.info.experiment_id}/runs?viewStateShareKey={sweep_id}&workflowType=machine_learning")
    view = json.loads(client.get_experiment(approx_sweep.info.experiment_id).tags[f"mlflow.sharedViewState.{sweep_id}"])
    assert view["searchFilter"] == f"tags.`ratsweep.sweep_id` = '{sweep_id}'" and view["orderByAsc"] is True
    assert view["selectedColumns"] == ["metrics.`max_abs_err`", "params.`target`", "params.`activation`", "params.`rational.degrees`",
                                       "params.`seed`"]
    digits, _ = trial_runs(client, "e2e_digits")
    assert len(digits) == 2
    for run in digits:
        assert run.data.params["epochs"] == "1"
        assert {"train_loss", "test_acc", "best_test_acc", "epoch_time_s"} <= set(run.data.metrics)
        assert "learning_curve.png" in artifacts(client, run)


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (headless) for the MLflow UI")
def test_the_printed_link_opens_the_runs_table_best_first(smoke_sweep, tmp_path):
    """`mlflow ui` on the sweep's store, and the link the summary printed, in a headless browser: the
    best trial's name comes before every other trial's in the rendered runs table, its metric shown."""
    from services import end

    cwd, proc = smoke_sweep
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{cwd / 'mlruns.db'}",
                           "--port", str(port)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        link = next(line for line in proc.stdout.splitlines() if line.startswith("Runs, best first: ")).split(": ", 1)[1]
        page = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                               link.replace("127.0.0.1:5000", f"127.0.0.1:{port}")],
                              capture_output=True, text=True, timeout=180).stdout
    finally:
        end(ui)
    client = mlflow_client(cwd)
    runs, _ = trial_runs(client, "e2e_approx")
    names = {r.info.run_name: r.data.metrics["max_abs_err"] for r in runs}
    positions = {name: page.find(name) for name in names}
    assert all(position >= 0 for position in positions.values()), (positions, page[-3000:])
    best = min(names, key=names.get)
    assert positions[best] == min(positions.values()), positions
    assert repr(names[best]) in page  # the metric is a column of the shared view


def wait_for_http(url: str, timeout_s: float = 90) -> None:
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer in {timeout_s} s")


def test_best_reads_mlflow(smoke_sweep):
    cwd, _ = smoke_sweep
    entries = json.loads(ratsweep(cwd, "best", "e2e_approx", "--top", "3", "--format", "json", "--include-smoke").stdout)
    assert len(entries) == 3 and all(set(e) == {"name", "run_id", "metric", "value", "config"} for e in entries)
    values = [e["value"] for e in entries]
    assert values == sorted(values) and entries[0]["metric"] == "max_abs_err"
    client = mlflow_client(cwd)
    assert client.get_run(entries[0]["run_id"]).data.metrics["max_abs_err"] == values[0]

    rerun = cwd / "best.yaml"
    rerun.write_text(ratsweep(cwd, "best", "e2e_approx", "--format", "yaml", "--include-smoke").stdout)
    [space] = load(str(rerun))
    assert space.experiment == "approx" and space.trials() == [{}]
    assert {k: v for k, v in space.config.items()} == entries[0]["config"]


def test_report_tables_and_plots(smoke_sweep):
    cwd, _ = smoke_sweep
    md = ratsweep(cwd, "report", "e2e_approx", "--plots", "plots", "--include-smoke").stdout
    rows = [line for line in md.splitlines() if line.startswith("| ") and ("relu" in line or "rational" in line)]
    assert len(rows) == 2, md  # grouped by activation (degrees fixed), averaged over the two seeds
    assert all(" (2)" in row for row in rows) and sum("**" in row for row in rows) == 1  # two seeds finished
    assert sum("| *" in row and "| **" not in row for row in rows) == 1  # the other is second best (italics)
    assert "±" in md
    assert (cwd / "plots" / "learning_curves.png").stat().st_size > 5000 and (cwd / "plots" / "table_bars.png").is_file()
    assert (cwd / "plots" / "report.md").read_text() in md  # the table as printed, beside its plots
    assert list((cwd / "plots").glob("*rational*/activation_layer1.png"))
    csv_lines = ratsweep(cwd, "report", "e2e_approx", "--format", "csv", "--group-by", "activation", "--include-smoke").stdout.splitlines()
    assert csv_lines[0] == "activation,max_abs_err_mean,max_abs_err_std,n,diverged,failed,missing,mark,minutes,caveat" and len(csv_lines) == 3
    latex = ratsweep(cwd, "report", "e2e_approx", "--format", "latex", "--include-smoke").stdout
    assert latex.startswith(r"\begin{tabular}") and r"\textbf{" in latex


def test_smoke_runs_are_left_out_unless_asked_for(smoke_sweep):
    cwd, _ = smoke_sweep
    proc = ratsweep(cwd, "report", "e2e_approx", check=False)
    assert proc.returncode == 2 and "e2e_approx: it has only --smoke runs so far; --include-smoke shows them" in proc.stderr


def test_unknown_sweep_name_is_one_line(smoke_sweep):
    cwd, _ = smoke_sweep
    proc = ratsweep(cwd, "best", "e2e_aprox", check=False)
    assert proc.returncode == 2 and "did you mean 'e2e_approx'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_searchers_and_schedulers_run(tmp_path):
    """optuna + ASHA, hyperopt, and PBT (which mutates rational.lr_mult mid-run), as real sweeps."""
    (tmp_path / "algs.yaml").write_text(textwrap.dedent("""\
        name: by_optuna
        experiment: approx
        metric: {name: mse, mode: min}
        num_samples: 6
        search_alg: {type: optuna, seed: 0}
        scheduler: {type: asha, max_t: 3, grace_period: 1}
        search_space:
          activation: {choice: [relu, rational]}
          rational.degrees: {choice: [[3, 2], [5, 4]]}
        ---
        name: by_hyperopt
        experiment: approx
        metric: {name: mse, mode: min}
        num_samples: 3
        search_alg: {type: hyperopt, seed: 0}
        search_space:
          activation: {choice: [relu, gelu, rational]}
          lr: {loguniform: [0.001, 0.01]}
        ---
        name: by_pbt
        experiment: approx
        metric: {name: mse, mode: min}
        num_samples: 2
        scheduler: {type: pbt, perturbation_interval: 1}
        config: {activation: rational}
        search_space:
          rational.lr_mult: {loguniform: [0.5, 4]}
        """))
    ratsweep(tmp_path, "run", "algs.yaml", "--smoke")
    client = mlflow_client(tmp_path)
    optuna_runs, _ = trial_runs(client, "by_optuna")
    configs = [tuple(sorted(r.data.params.items())) for r in optuna_runs]
    assert 1 <= len(optuna_runs) <= 3 and len(set(configs)) == len(configs)  # 3 distinct configs exist
    assert all(r.info.status == "FINISHED" for r in optuna_runs)
    hyperopt_runs, _ = trial_runs(client, "by_hyperopt")
    assert len(hyperopt_runs) == 3 and all(r.info.status == "FINISHED" for r in hyperopt_runs)
    pbt_runs, _ = trial_runs(client, "by_pbt")
    assert len(pbt_runs) == 2 and all(r.info.status == "FINISHED" for r in pbt_runs)
    assert all(len(client.get_metric_history(r.info.run_id, "mse")) >= 3 for r in pbt_runs)


def test_gpu_request_on_a_cluster_without_gpus_starts_nothing(tmp_path):
    (tmp_path / "gpu.yaml").write_text("name: g\nexperiment: approx\nmetric: {name: mse, mode: min}\nresources: {gpu: 0.25}\n")
    proc = ratsweep(tmp_path, "run", "gpu.yaml", check=False, env={"CUDA_VISIBLE_DEVICES": ""})  # (--smoke would run it on CPU)
    assert proc.returncode == 2, proc.stderr
    assert "gpu.yaml: resources.gpu: expected 0 (this cluster has no GPU), got 0.25" in proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_smoke_says_which_resources_the_real_run_would_be_refused(tmp_path):
    (tmp_path / "big.yaml").write_text("name: big\nexperiment: approx\nmetric: {name: mse, mode: min}\n"
                                       "resources: {cpu: 64, gpu: 1}\n")
    proc = ratsweep(tmp_path, "run", "big.yaml", "--smoke", env={"CUDA_VISIBLE_DEVICES": ""})  # runs: 1 CPU, no GPU
    assert "big: 1 finished" in proc.stdout
    said = [line for line in proc.stdout.splitlines() if line.startswith("ratsweep: --smoke: ")]
    assert len(said) == 2 and "resources.cpu: expected at most" in said[0] and "got 64" in said[0], proc.stdout
    assert "resources.gpu: expected 0 (this cluster has no GPU), got 1" in said[1]
    assert all(line.endswith("a run without --smoke is refused here") for line in said)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict:
    """The environment of a ratsweep that has the test plugin installed (into a folder on PYTHONPATH)."""
    return install_plugin(tmp_path_factory.mktemp("site"))


def test_plugin_package_is_discovered_and_swept(tmp_path, plugin_env):
    env = plugin_env
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
        name: toy_unreported
        experiment: toy
        metric: {name: mse, mode: min}
        search_space:
          report_as: {grid: [mse, loss]}
        ---
        name: toy_digits
        experiment: digits
        metric: {name: best_test_acc, mode: max}
        config: {model: digits_tiny}
        """))
    proc = ratsweep(tmp_path, "run", "toy.yaml", "--smoke", env=env, check=False)
    assert proc.returncode == EXIT_TRIALS_FAILED, proc.stderr[-3000:]  # the sweeps ran; some trials failed
    assert "== toy_sweep: 8 trials" in proc.stdout and "toy_sweep: 2 finished, 4 failed, 2 diverged" in proc.stdout
    assert "toy_unreported: 1 finished, 1 failed" in proc.stdout and "toy_digits: 1 finished" in proc.stdout
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
            # the value reported before the NaN stays the run's metric (the authors' convention counts it)
            assert [m.step for m in client.get_metric_history(run.info.run_id, "mse")] == [1] and run.data.metrics["mse"] < 1
        else:
            assert run.info.status == "FINISHED" and not failure and len(client.get_metric_history(run.info.run_id, "mse")) == 2
            assert "final.txt" in artifacts(client, run)  # written after the last report, still attached
        assert fail or run.data.params["denormals_flushed"] == "True"  # CPU trials flush subnormals by default
        assert run.data.tags["ratsweep.provider.ratsweep-toy-plugin"] == "0.1.0"  # who provided the experiment
    unreported, _ = trial_runs(client, "toy_unreported")
    by_name = {r.data.params["report_as"]: r for r in unreported}
    assert by_name["mse"].info.status == "FINISHED"
    assert by_name["loss"].info.status == "FAILED" and by_name["loss"].data.tags["ratsweep.failure"] == (
        "the experiment reported loss but not 'mse', the sweep's metric")
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    report = ratsweep(tmp_path, "report", "toy_sweep", "--include-smoke", env=env).stdout
    assert report.count("fails to train (0, 1 diverged)") == 2 and report.count("- (0, 1 failed)") == 4  # not dropped
    [digits] = trial_runs(client, "toy_digits")[0]
    assert digits.info.status == "FINISHED" and digits.data.params["model"] == "digits_tiny"


def test_a_trials_torch_flags_do_not_reach_the_next_trial_on_a_reused_worker(tmp_path, plugin_env):
    (tmp_path / "flags.yaml").write_text("name: toy_flags\nexperiment: toy\nmetric: {name: mse, mode: min}\n"
                                         "search_space:\n  threads: {grid: [2, 0, 3]}\n")
    ratsweep(tmp_path, "run", "flags.yaml", "--smoke", "--max-concurrent", "1", env=plugin_env)
    runs, _ = trial_runs(mlflow_client(tmp_path), "toy_flags")
    assert len({r.data.params["pid"] for r in runs}) == 1  # one worker ran them all, one after another (reuse_actors)
    assert {r.data.params["flags_at_start"] for r in runs} == {"1 False"}, [r.data.params for r in runs]


def test_best_yaml_reruns_every_experiments_default_config(tmp_path, plugin_env):
    """best --format yaml -> validate -> run --smoke, for the default config of every registered
    experiment and the plugin's (None and "" defaults included: rational.lr_mult, note)."""
    metrics = {"approx": "{name: mse, mode: min}", "digits": "{name: best_test_acc, mode: max}",
               "cifar10": "{name: best_test_acc, mode: max}", "iql": "{name: final_normalized_score, mode: max}",
               "td3bc": "{name: final_normalized_score, mode: max}", "tinyimagenet": "{name: best_ema_top1, mode: max}",
               "toy": "{name: mse, mode: min}"}
    assert set(metrics) == set(registry.experiments()) | {"toy"}  # a new experiment joins this test
    data = write_tinyimagenet(write_cifar10(tmp_path / "data", train_per_batch=20, test=20), train_per_class=1, val_per_class=1)
    plugin_env = {**plugin_env, "MINARI_DATASETS_PATH": str(write_minari(tmp_path / "minari", tasks=("halfcheetah",), episodes=2, steps=20))}
    docs = [f"name: rt_{name}\nexperiment: {name}\nmetric: {metric}\nconfig: {{activation: rational}}\n"
            for name, metric in metrics.items()]
    (tmp_path / "defaults.yaml").write_text("---\n".join(docs))
    run = ("--smoke", "--data-dir", str(data))
    ratsweep(tmp_path, "run", "defaults.yaml", *run, env=plugin_env, timeout=600)
    best = [ratsweep(tmp_path, "best", f"rt_{name}", "--format", "yaml", "--include-smoke", env=plugin_env).stdout for name in metrics]
    assert "lr_mult: null" in best[-1] and "note: ''" in best[-1]
    (tmp_path / "best.yaml").write_text("---\n".join(best))
    assert ratsweep(tmp_path, "validate", "best.yaml", env=plugin_env).stdout.count(": ok (") == len(metrics)
    ratsweep(tmp_path, "run", "best.yaml", *run, env=plugin_env, timeout=600)
    for name in metrics:
        [rerun], _ = trial_runs(mlflow_client(tmp_path), f"rt_{name}_best")
        [first], _ = trial_runs(mlflow_client(tmp_path), f"rt_{name}")
        config = [{k: v for k, v in run.data.params.items() if k != "pid"} for run in (rerun, first)]  # pid: the toy's worker
        assert rerun.info.status == "FINISHED" and config[0] == config[1]


# Six approx trials of a few seconds each, six reports per trial.
SLOW_SPACE = """\
name: {name}
experiment: approx
metric: {{name: max_abs_err, mode: min}}
config: {{steps: 1200, report_every: 200, param_budget: 200}}
search_space:
  target: {{grid: [abs, step, sin]}}
  activation: {{grid: [relu, rational]}}
"""


def wait_until_finished(client, cwd: Path, name: str, count: int, driver: subprocess.Popen) -> list:
    """The sweep's trial runs once `count` of them have finished, the driver still running."""
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        time.sleep(1)
        experiment = (cwd / "mlruns.db").exists() and client.get_experiment_by_name(name)
        if experiment:
            runs = client.search_runs([experiment.experiment_id], "tags.`ratsweep.kind` = 'trial'")
            if sum(r.info.status == "FINISHED" for r in runs) >= count:
                return runs
    pytest.fail(f"the sweep did not finish {count} trials in time")


def finished_runs(client, name: str) -> list:
    return [r for r in trial_runs(client, name)[0] if r.info.status == "FINISHED"]


def test_resume_after_killing_the_driver(tmp_path):
    (tmp_path / "slow.yaml").write_text(SLOW_SPACE.format(name="resumable"))
    args = [sys.executable, "-m", "ratsweep", "run", "slow.yaml", "--max-concurrent", "1"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = mlflow_client(tmp_path)
    try:
        runs = wait_until_finished(client, tmp_path, "resumable", 2, driver)
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
        assert steps == set(range(200, 1201, 200)), steps  # 1200 steps / 200 per report, each report once, at its step
        if run.info.run_id in finished_before:  # finished trials were not run again
            assert run.info.end_time == finished_before[run.info.run_id]
            [trial_dir] = (tmp_path / "ratsweep_results").glob(f"resumable-*/approx_{run.data.tags['ratsweep.trial_id']}_*")
            assert len((trial_dir / "result.json").read_text().splitlines()) == 6
    # Tune's JSON and CSV results are written, its TensorBoard files not (MLflow is the record)
    # (a trial starting as the driver was killed may leave an empty folder that the resumed run does not reuse)
    trial_dirs = [d for d in (tmp_path / "ratsweep_results").glob("resumable-*/approx_*") if (d / "progress.csv").is_file()]
    assert len(trial_dirs) == 6 and not list((tmp_path / "ratsweep_results").glob("resumable-*/approx_*/events.out.tfevents*"))


def test_a_sync_that_found_tunes_temporary_file_gone_is_not_shown():
    """Tune's background copy of its state folder races its own atomic writes (a .<uuid>-tmp-* file
    listed, then renamed away): harmless, and not printed. Any other failed copy still is."""
    import logging

    from ratsweep.sweep.runner import _VanishedTempFile

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.train._internal.syncer", logging.WARNING, __file__, 1, message, None, None)

    vanished = ("Last sync command failed with the following error:\nTraceback (most recent call last):\n...\nFileNotFoundError: "
                "[Errno 2] Failed to open local file '/tmp/ray/session/artifacts/x/sweep/driver_artifacts/"
                ".2f3c-tmp-basic-variant-state-2026-12-05_17-00-00.json'. Detail: [errno 2] No such file or directory")
    assert not _VanishedTempFile().filter(record(vanished))
    assert _VanishedTempFile().filter(record(vanished.replace("FileNotFoundError", "PermissionError")))
    assert _VanishedTempFile().filter(record("Last sync command failed with the following error:\nFileNotFoundError: "
                                             "/shared/results/sweep/experiment_state.json"))


def test_resume_when_the_state_names_a_checkpoint_already_replaced(tmp_path):
    """Tune saves its experiment state on a period but deletes a trial's older checkpoint as soon as a
    newer one lands (num_to_keep=1). Kill the driver in that window, made certain here by putting back
    the state saved before the deletion: the trial must resume from the checkpoint that replaced it
    (its steps all logged), not fail."""
    space = SLOW_SPACE.format(name="replaced").replace("steps: 1200", "steps: 6000").replace("[abs, step, sin]", "[abs, sin]")
    (tmp_path / "slow.yaml").write_text(space.replace("[relu, rational]", "[relu]"))
    args = [sys.executable, "-m", "ratsweep", "run", "slow.yaml", "--max-concurrent", "1"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stale = recorded = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
            states = list((tmp_path / "ratsweep_results").glob("replaced-*/experiment_state-*.json"))
            try:
                text = states[0].read_text()
                trials = [(json.loads(t), json.loads(m)) for t, m in json.loads(text)["trial_data"]]
            except (IndexError, OSError, ValueError):
                continue  # not written yet, or mid-copy
            if stale is None:
                running = [(t, m) for t, m in trials if t["status"] == "RUNNING" and (m["last_result"] or {}).get("checkpoint_dir_name")]
                if running and running[0][1]["last_result"]["training_iteration"] >= 2:
                    trial, metadata = running[0]
                    stale, recorded = text, states[0].parent / trial["relative_logdir"] / metadata["last_result"]["checkpoint_dir_name"]
            elif not recorded.exists():  # replaced by a newer checkpoint; the trial still runs
                break
        else:
            pytest.fail("the sweep ended before a checkpoint named in a saved state was replaced")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    checkpoints, quiet_since = None, time.time()
    while time.time() - quiet_since < 3:  # a worker may outlive the driver by a report or two
        time.sleep(0.5)
        if checkpoints != (checkpoints := sorted(recorded.parent.glob("checkpoint_*"))):
            quiet_since = time.time()
    states[0].write_text(stale)

    resumed = ratsweep(tmp_path, "run", "slow.yaml", "--resume").stdout
    [(lost, replacement)] = re.findall(r"\((checkpoint_\d+) -> (checkpoint_\d+)\)", resumed)
    # the state's checkpoint manager may lag its last result by one report
    assert lost <= recorded.name < replacement and not (recorded.parent / lost).exists()
    client = mlflow_client(tmp_path)
    runs, [sweep] = trial_runs(client, "replaced")
    assert sweep.info.status == "FINISHED" and len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert {m.step for m in client.get_metric_history(run.info.run_id, "max_abs_err")} == set(range(200, 6001, 200))
    last = json.loads((recorded.parent / "result.json").read_text().splitlines()[-1])
    iteration = int(replacement.removeprefix("checkpoint_")) + 1  # one checkpoint per report
    assert (last["training_iteration"], last["iterations_since_restore"]) == (30, 30 - iteration)  # went on from it


@pytest.mark.parametrize("sig, limit", [(signal.SIGINT, ["--max-concurrent", "1"]), (signal.SIGTERM, [])])
def test_an_interrupt_stops_the_invocation_closes_its_runs_and_says_how_to_resume(tmp_path, sig, limit):
    next_sweep = "name: never_reached\nexperiment: approx\nmetric: {name: mse, mode: min}\n"
    (tmp_path / "slow.yaml").write_text(SLOW_SPACE.format(name="interrupted") + "---\n" + next_sweep)
    args = [sys.executable, "-m", "ratsweep", "run", "slow.yaml", *limit]  # no limit: Tune creates trials it cannot start yet
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=err, start_new_session=True)
    client = mlflow_client(tmp_path)
    try:
        wait_until_finished(client, tmp_path, "interrupted", 1, driver)
        os.kill(driver.pid, sig)  # the driver alone, as a terminal's Ctrl-C or a scheduler's stop would
        code = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert code == 128 + sig, stderr[-3000:]
    assert f"continue with: {shlex.join(['ratsweep', 'run', 'slow.yaml', *limit, '--resume'])}" in stderr
    assert "INTERRUPTED" in stdout and "OK" in stdout  # the finished trial, and the one stopped
    rows = [line.split() for line in stdout.splitlines() if re.match(r"^(-|[0-9.e+-]+) +(OK|INTERRUPTED|NOT STARTED)", line)]
    assert all(row[0] != "-" for row in rows if row[1] == "OK"), stdout  # a trial that never reported did not finish
    summary = next(line for line in stdout.splitlines() if line.startswith("interrupted: ") and "finished" in line)
    counts = {what: int(n) for n, what in (part.split(" ", 1) for part in summary.removeprefix("interrupted: ").split(", "))}
    assert counts["finished"] >= 1 and counts["interrupted"] >= 1 and sum(counts.values()) == 6, summary
    assert counts["finished"] == sum(row[1] == "OK" for row in rows) == len(finished_runs(client, "interrupted")), stdout
    assert "Tuner.restore" not in stdout + stderr and "never_reached" not in stdout  # the file's next sweep did not start
    runs, [sweep] = trial_runs(client, "interrupted")
    assert sweep.info.status == "KILLED" and not [r for r in runs if r.info.status == "RUNNING"]
    assert client.get_experiment_by_name("never_reached") is None
    if sig == signal.SIGINT:
        resumed = ratsweep(tmp_path, "run", "slow.yaml", *limit, "--resume", timeout=600).stdout
        assert "interrupted: 6 finished\n" in resumed and "INTERRUPTED" not in resumed and "never_reached: 1 finished" in resumed
        runs, [sweep] = trial_runs(client, "interrupted")
        assert sweep.info.status == "FINISHED" and len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
        assert all({m.step for m in client.get_metric_history(r.info.run_id, "max_abs_err")} == set(range(200, 1201, 200)) for r in runs)


HEADER_SUBMIT = """\
name: submitted
experiment: approx
metric: {name: mse, mode: min}
search_space:
  activation: {grid: [relu, rational]}
"""


def test_submit_stages_a_space_file_from_anywhere_and_runs_bundled_ones_by_name(tmp_path):
    from ratsweep.sweep.space import SpaceError, load
    from ratsweep.sweep.submit import stage_package, stage_space

    package = stage_package(tmp_path / "staged")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.yaml").write_text(HEADER_SUBMIT)
    assert stage_space(str(tmp_path / "elsewhere" / "mine.yaml"), package) == "submitted_mine"
    assert load(str(package / "search_spaces" / "submitted_mine.yaml"))[0].name == "submitted"
    assert stage_space("quickstart", package) == "quickstart" and (package / "search_spaces" / "quickstart.yaml").is_file()
    with pytest.raises(SpaceError, match="no such file"):
        stage_space(str(tmp_path / "missing.yaml"), package)
    # a space extending a file beside it travels merged: the cluster has no copy of its base
    (tmp_path / "elsewhere" / "more.yaml").write_text("extends: mine.yaml\nname: more\nconfig: {steps: 3}\n")
    assert stage_space(str(tmp_path / "elsewhere" / "more.yaml"), package) == "submitted_more"
    [staged] = load(str(package / "search_spaces" / "submitted_more.yaml"))
    assert staged.name == "more" and staged.config["steps"] == 3 and set(staged.search_space) == {"activation"}


def test_the_job_entrypoint_imports_the_staged_package_whatever_the_working_dir_holds(tmp_path):
    """Ray puts the py_modules ahead of the working dir on PYTHONPATH, but `python -m`/`-c` put the
    working dir first of all: a source checkout's `ratsweep/` (without the submitted space) or an
    unrelated `ratsweep/` would be imported instead of the staged package."""
    from ratsweep.sweep.submit import ENTRYPOINT, stage_package, stage_space

    package = stage_package(tmp_path / "staged")
    (tmp_path / "mine.yaml").write_text(HEADER_SUBMIT)
    name = stage_space(str(tmp_path / "mine.yaml"), package)
    job = tmp_path / "job"
    (job / "ratsweep").mkdir(parents=True)
    (job / "ratsweep" / "__init__.py").write_text("raise ImportError('the working dir`s own ratsweep/ was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package.parent), str(job)])}  # as Ray orders them
    shadowed = subprocess.run([sys.executable, "-m", "ratsweep", "validate", name], cwd=job, env=env, capture_output=True, text=True)
    assert "working dir`s own ratsweep/ was imported" in shadowed.stderr  # the bug: plain `python -m`
    for safe_path in ("", "1"):  # PYTHONSAFEPATH=1 (a cluster's choice): no working-dir entry, the staged package stays first
        proc = subprocess.run([sys.executable, *ENTRYPOINT[1:], "validate", name], cwd=job, env={**env, "PYTHONSAFEPATH": safe_path},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "submitted" in proc.stdout, (safe_path, proc.stderr)


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--tracking-uri: expected the MLflow store the job logs to"),
        (["--tracking-uri", "http://127.0.0.1:1"], "--storage: expected an absolute path"),
    ],
)
def test_run_as_a_ray_job_refuses_stores_in_the_jobs_temporary_folder(tmp_path, args, expected):
    """`ray job submit -- ratsweep run ...` runs in a temporary copy of the working dir: its default
    mlruns.db and ratsweep_results would vanish with it."""
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    env = {"MLFLOW_TRACKING_URI": "", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}  # set by Ray's job supervisor
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", *args, env=env, check=False)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--tracking-uri: expected the MLflow store the job logs to"),
        (["--tracking-uri", "sqlite:///mlruns.db"], "--tracking-uri: expected an absolute SQLite path"),
        (["--tracking-uri", "http://127.0.0.1:1", "--storage", "results"], "--storage: expected an absolute path"),
        (["--tracking-uri", "http://127.0.0.1:1"], "--address: cannot reach a Ray dashboard at http://127.0.0.1:"),
    ],
)
def test_submit_mistakes_are_one_line(tmp_path, args, expected):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    # a home of its own: this machine's Ray token files (Ray writes ~/.ray/auth_token 0644) would add a warning line
    env = {"MLFLOW_TRACKING_URI": "", "HOME": str(tmp_path)}
    proc = ratsweep(tmp_path, "submit", "space.yaml", "--address", f"http://127.0.0.1:{free_port()}", *args, env=env, check=False)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_tracking_store_is_one_line_before_ray_starts(tmp_path):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--tracking-uri", "bogus://x", check=False)
    assert proc.returncode == 2 and "--tracking-uri: cannot use MLflow store 'bogus://x'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["nothing listening", "not a Ray head", "ray://", "dashboard URL"])
def test_run_address_that_is_no_ray_head_is_one_line_within_seconds(tmp_path, kind):
    import socket
    import threading

    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    port = free_port()
    if kind == "not a Ray head":  # a web server, as a dashboard's port answers
        server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=lambda: server.accept()[0].sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"), daemon=True).start()
    address = {"ray://": f"ray://127.0.0.1:{port}", "dashboard URL": f"http://127.0.0.1:{port}"}.get(kind, f"127.0.0.1:{port}")
    expected = {"nothing listening": "no Ray head answers at", "not a Ray head": "answers, but not as a Ray head's GCS port",
                "ray://": "Ray Client (ray://) is not supported", "dashboard URL": "is for ratsweep submit"}[kind]
    started = time.monotonic()
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--address", address, check=False, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "mlruns.db").exists()


def test_a_foreign_sqlite_database_is_refused_and_left_as_it_was(tmp_path):
    import sqlite3

    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    before = (tmp_path / "other.db").read_bytes()
    for command in (["run", "space.yaml", "--smoke"], ["best", "submitted"], ["report", "submitted"]):
        proc = ratsweep(tmp_path, *command, "--tracking-uri", "sqlite:///other.db", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "expected an MLflow SQLite store or a new file" in proc.stderr and "tables: notes" in proc.stderr, proc.stderr
    assert (tmp_path / "other.db").read_bytes() == before


@pytest.mark.parametrize(
    "document, expected",
    [
        (HEADER_SUBMIT.replace("name: submitted", "name: ../../x"), "name: expected letters, digits"),
        (HEADER_SUBMIT.replace("name: submitted", "name: a/b"), "got 'a/b'"),
        (HEADER_SUBMIT + "  seed: {grid: [0, 1]}\n  activation: {grid: [gelu]}\n", "the key 'activation' is given twice"),
    ],
)
def test_a_name_that_is_a_path_and_a_key_given_twice_are_one_line(tmp_path, document, expected):
    (tmp_path / "space.yaml").write_text(document)
    proc = ratsweep(tmp_path, "validate", "space.yaml", check=False)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resume_with_no_earlier_sweep_and_sync_of_a_folder_that_is_no_sweep_are_one_line(tmp_path):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--resume", "--storage", "typo_results", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--resume: expected an earlier sweep of 'submitted' under" in proc.stderr and not (tmp_path / "mlruns.db").exists()
    (tmp_path / "notes").mkdir()
    for target in ("notes", "space.yaml"):
        proc = ratsweep(tmp_path, "sync", target, check=False)
        assert proc.returncode == 2 and "expected a sweep's Tune folder" in proc.stderr, proc.stderr
    sweep = tmp_path / "results" / "submitted-20261205-120000"
    sweep.mkdir(parents=True)
    (sweep / "ratsweep_sweep.json").write_text("{}")
    (sweep / "mlflow_outbox.json").write_text('{"uri": "sqlite:///x.db", "pend')  # cut short
    proc = ratsweep(tmp_path, "sync", str(sweep), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "the file is damaged" in proc.stderr, proc.stderr


@pytest.mark.parametrize("damaged", ["tuner.pkl", "ratsweep_sweep.json"])
def test_a_resume_that_cannot_read_its_state_is_one_line_and_reopens_no_run(tmp_path, damaged):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT.replace("[relu, rational]", "[relu]"))
    ratsweep(tmp_path, "run", "space.yaml", "--smoke")
    [sweep] = (tmp_path / "ratsweep_results").glob("submitted-*")
    (sweep / damaged).write_bytes(b"\x80\x04garbage")
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--resume", check=False)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ratsweep run:")]  # after Ray's own start-up lines
    assert proc.returncode == 2 and len(ours) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--resume: " in ours[0] and "run without --resume to start this sweep afresh" in ours[0]
    _, [parent] = trial_runs(mlflow_client(tmp_path), "submitted")
    assert parent.info.status == "FINISHED"  # not flipped back to RUNNING


def test_an_interrupt_while_ray_shuts_down_exits_130(tmp_path):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT.replace("[relu, rational]", "[relu]"))
    args = [sys.executable, "-m", "ratsweep", "run", "space.yaml", "--smoke"]
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        for line in driver.stdout:
            if line.startswith("Runs, best first:"):  # the summary's last line: Ray shuts down next (about a second)
                os.kill(driver.pid, signal.SIGINT)
                break
        code, stderr = driver.wait(timeout=120), driver.stderr.read()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr.strip().splitlines()[-1]
    _, [parent] = trial_runs(mlflow_client(tmp_path), "submitted")
    assert parent.info.status == "FINISHED"  # the sweep had ended: nothing of it changes


def test_no_room_for_a_local_rays_session_is_one_line(tmp_path, monkeypatch):
    from unittest import mock

    from ratsweep.sweep import checks
    from ratsweep.sweep.space import UserError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    full = shutil._ntuple_diskusage(total=2**30, used=2**30 - 2**20, free=2**20)
    with mock.patch.object(shutil, "disk_usage", autospec=True, return_value=full) as disk_usage:
        with pytest.raises(UserError, match=rf"Ray's temporary folder {tmp_path}/tmp/ray has 1 MB free, a local Ray needs"):
            checks.check_ray_temp()
    disk_usage.assert_called_once_with(tmp_path)  # the nearest folder that exists


def test_a_full_disk_under_ray_is_one_line(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (test_no_room_for_a_local_rays_session_is_one_line covers the check)")
    try:
        (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)
        proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", env={"RAY_TMPDIR": str(tiny)}, check=False)
        assert proc.returncode == 2 and "has 1 MB free, a local Ray needs at least" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not list((tmp_path / "ratsweep_results").iterdir())
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_folders_that_cannot_be_written_are_one_line(tmp_path):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT.replace("[relu, rational]", "[relu]"))
    (tmp_path / "mlruns-artifacts").write_text("")  # a plain file where the runs' files go
    for command, expected in ((["run", "space.yaml", "--smoke"], "expected a writable folder for the runs' files at"),
                              (["data", "cifar10", "--dir", "mlruns-artifacts"], "--dir: mlruns-artifacts: expected a folder"),
                              (["report", "submitted", "--plots", "mlruns-artifacts/plots"], "--plots: mlruns-artifacts/plots")):
        proc = ratsweep(tmp_path, *command, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ratsweep_results").exists()
    (tmp_path / "mlruns-artifacts").unlink()
    ratsweep(tmp_path, "run", "space.yaml", "--smoke")
    sweeps_before = sorted((tmp_path / "ratsweep_results").iterdir())
    shutil.rmtree(tmp_path / "mlruns-artifacts" / "submitted")
    (tmp_path / "mlruns-artifacts" / "submitted").write_text("")  # the experiment's own artifact folder
    proc = ratsweep(tmp_path, "run", "space.yaml", "--smoke", check=False)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ratsweep run:")]
    assert proc.returncode == 2 and len(ours) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot store the sweep's files at" in ours[0] and "the sweep did not start" in ours[0]
    runs, sweeps = trial_runs(mlflow_client(tmp_path), "submitted")
    assert len(runs) == 1 and sorted(r.info.status for r in sweeps) == ["FAILED", "FINISHED"]  # none left RUNNING
    assert sorted((tmp_path / "ratsweep_results").iterdir()) == sweeps_before


def test_resume_after_the_space_changed_is_one_line_and_changes_nothing(tmp_path):
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT.replace("[relu, rational]", "[relu]"))
    ratsweep(tmp_path, "run", "space.yaml", "--smoke")
    [sweep] = (tmp_path / "ratsweep_results").glob("submitted-*")
    before = sorted((p.relative_to(sweep), p.stat().st_mtime_ns) for p in sweep.rglob("*"))
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT)  # a grid value added
    for extra, changed in ((["--smoke"], "search_space.activation"),  # not smoke, another steps: those too
                           (["--set", "steps=5"], "config.report_every, config.steps, search_space.activation, smoke")):
        proc = ratsweep(tmp_path, "run", "space.yaml", "--resume", *extra, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"submitted is not the sweep that began in {sweep} (changed since: {changed})" in proc.stderr, proc.stderr
    assert sorted((p.relative_to(sweep), p.stat().st_mtime_ns) for p in sweep.rglob("*")) == before
    runs, [parent] = trial_runs(mlflow_client(tmp_path), "submitted")
    assert parent.info.status == "FINISHED" and len(runs) == 1
    (tmp_path / "space.yaml").write_text(HEADER_SUBMIT.replace("[relu, rational]", "[relu]") + "report: {rows: [activation]}\n")
    assert "resuming" in ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--resume").stdout  # the layout may change


def test_two_sweeps_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    from ratsweep.sweep.resume import reserve_folder

    first, second = (reserve_folder(tmp_path / "results", "same", "20261205-120000") for _ in range(2))
    assert first.name == "same-20261205-120000" and second.name == "same-20261205-120000-2" and second.is_dir()


def test_resume_repairs_state_files_truncated_by_a_kill(tmp_path, monkeypatch):
    """Tune copies its state into storage non-atomically: a truncated copy is replaced by the
    driver's intact original, and with no original --resume refuses rather than rerun trials."""
    from ratsweep.sweep.resume import repair_tune_state
    from ratsweep.sweep.space import SpaceError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    experiment = tmp_path / "results" / "sweep-1"
    staged = tmp_path / "ray" / "session_1" / "artifacts" / "t" / "sweep-1" / "driver_artifacts"
    experiment.mkdir(parents=True)
    staged.mkdir(parents=True)
    state = json.dumps({"runner_data": {}, "trial_data": []})
    (staged / "experiment_state-1.json").write_text(state)
    (experiment / "experiment_state-1.json").write_text(state[:10])
    (experiment / "searcher-state-1.pkl").write_bytes(__import__("pickle").dumps({"pending": []}))
    assert repair_tune_state(experiment) == ["experiment_state-1.json"]
    assert (experiment / "experiment_state-1.json").read_text() == state
    (experiment / "searcher-state-1.pkl").write_bytes(b"\x80\x05")
    with pytest.raises(SpaceError, match="searcher-state-1.pkl is damaged"):
        repair_tune_state(experiment)
