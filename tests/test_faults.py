"""Bad input and broken surroundings: each is one line and a documented exit code, before Ray
starts wherever it can be checked then, leaving no store or run behind."""

from __future__ import annotations

import json
import shutil
import textwrap
import time

import pytest
import torch
from helpers import ratsweep

from ratsweep import cli, registry
from ratsweep.experiments.common import LocalSession
from ratsweep.sweep import resume, runner, tracking
from ratsweep.sweep.space import MAX_TRIALS, SpaceError, load
from ratsweep.sweep.trainable import ITERATION_KEY, STATE_FILE, checkpoint_iteration


def one_line_exit_2(proc, *fragments: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-3000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def cli_exit(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main(list(argv))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


# ---- before anything runs ----------------------------------------------------------------------


def test_set_with_broken_yaml_is_one_line(capsys):
    code, _, err = cli_exit(capsys, "validate", "quickstart", "--set", "rational.degrees=[5, 4")
    assert code == 2 and err.count("\n") == 1 and "--set: 'rational.degrees=[5, 4': the value is not valid YAML" in err


def test_a_space_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\nexperiment: approx\nmetric: {name: mse, mode: min}\n".encode("latin-1"))
    code, _, err = cli_exit(capsys, "validate", str(path))
    assert code == 2 and err.count("\n") == 1 and "not UTF-8 text" in err


@pytest.mark.parametrize("argv", [["run", "quickstart", "--max-concurrent", "-1"], ["run", "quickstart", "--max-concurrent", "0"],
                                  ["best", "x", "--top", "-3"], ["validate", "quickstart", "--max-trials", "0"]])
def test_counts_below_one_are_refused_by_the_argument_parser(argv, capsys):
    code, _, err = cli_exit(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "expected an integer >= 1" in err


def test_validate_tells_every_mistake_of_every_document(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(textwrap.dedent("""\
        name: one
        experiment: approx
        metric: {name: mse, mode: min}
        resourcez: {cpu: 1}
        config: {stepz: 10}
        search_space:
          activation: {grid: [relu, gelu, rationl]}
        ---
        name: two
        experiment: aprox
        metric: {name: mse, mode: min}
        """))
    code, _, err = cli_exit(capsys, "validate", str(tmp_path / "bad.yaml"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 4, err
    assert "resourcez: unknown key (did you mean 'resources'?)" in lines[0]
    assert "config.stepz: unknown key (did you mean 'steps'?)" in err
    assert "search_space.activation.grid: expected one of" in err and "did you mean 'rational'?" in err
    assert "experiment: unknown experiment 'aprox' (did you mean 'approx'?)" in lines[3]


def test_registered_names_get_a_suggestion(capsys):
    code, _, err = cli_exit(capsys, "validate", "cifar10_table1", "--set", "model=vgg9")
    assert code == 2 and "config.model: expected one of vgg4, vgg8 (architectures of family 'cifar'), or timm:NAME, torchvision:NAME, got 'vgg9' (did you mean 'vgg8'?)" in err
    code, _, err = cli_exit(capsys, "data", "cifar1O")
    assert code == 2 and "did you mean 'cifar10'?" in err
    code, _, err = cli_exit(capsys, "describe", "digts")
    assert code == 2 and "did you mean 'digits'?" in err


def test_small_floats_are_numbers_in_spaces_set_and_params(tmp_path, capsys):
    """YAML 1.1 reads 1e-5 (no dot) as a string; Python writes 1e-05 so, and so do users."""
    from ratsweep.experiments.cifar10 import Cifar10Config
    from ratsweep.sweep import results

    assert results._typed(Cifar10Config, "lr", "1e-05") == 1e-05 and results._typed(Cifar10Config, "lr", "2.5e+16") == 2.5e16
    (tmp_path / "s.yaml").write_text("name: s\nexperiment: cifar10\nmetric: {name: best_test_acc, mode: max}\n"
                                     "config: {lr: 1e-5}\nsearch_space:\n  rational.lr_mult: {grid: [5e-1, 2]}\n")
    [space] = load(str(tmp_path / "s.yaml"))
    assert space.config["lr"] == 1e-5 and space.search_space["rational.lr_mult"].values == (0.5, 2)
    code, out, _ = cli_exit(capsys, "validate", "cifar10_table1", "--set", "lr=1e-5")
    assert code == 0


def test_non_finite_bounds_are_refused(tmp_path):
    (tmp_path / "inf.yaml").write_text("name: x\nexperiment: approx\nmetric: {name: mse, mode: min}\n"
                                       "search_space:\n  lr: {uniform: [0.1, .inf]}\n")
    with pytest.raises(SpaceError, match=r"search_space.lr.uniform: expected a finite number, got inf"):
        load(str(tmp_path / "inf.yaml"))


def test_a_metric_minimized_the_wrong_way_is_refused(tmp_path):
    (tmp_path / "m.yaml").write_text("name: x\nexperiment: digits\nmetric: {name: best_test_acc, mode: min}\n")
    with pytest.raises(SpaceError, match="metric.mode: expected max for best_test_acc"):
        load(str(tmp_path / "m.yaml"))


def huge(tmp_path, values: int, keys: int = 5):
    grid = "\n".join(f"  {k}: {{grid: {list(range(1, values + 1))}}}" for k in ("depth", "param_budget", "steps", "batch_size", "seed")[:keys])
    path = tmp_path / f"huge{values}.yaml"
    path.write_text(f"name: huge\nexperiment: approx\nmetric: {{name: mse, mode: min}}\nsearch_space:\n{grid}\n")
    return path


def test_huge_grids_are_counted_without_expanding_and_refused_unless_asked(tmp_path, capsys):
    started = time.perf_counter()
    code, _, err = cli_exit(capsys, "validate", str(huge(tmp_path, 70)))  # 70^5 = 1.68e9 grid points
    assert code == 2 and "up to 1,680,700,000 trials, more than the limit of 10,000; pass --max-trials 1680700000" in err
    assert time.perf_counter() - started < 10
    code, out, _ = cli_exit(capsys, "validate", str(huge(tmp_path, 70)), "--max-trials", "1680700000")
    assert code == 0 and "up to 1,680,700,000 trials" in out
    [space] = load(str(huge(tmp_path, 10, keys=4)))  # exactly at the limit: allowed
    assert space.trial_bound() == MAX_TRIALS


def test_unreachable_tracking_server_fails_in_seconds_before_ray(tmp_path):
    started = time.perf_counter()
    proc = ratsweep(tmp_path, "run", "quickstart", "--tracking-uri", "http://127.0.0.1:9", check=False)
    one_line_exit_2(proc, "--tracking-uri: cannot use MLflow store 'http://127.0.0.1:9'")
    assert time.perf_counter() - started < 60 and "ray" not in proc.stdout.lower()


def test_a_corrupt_sqlite_store_is_refused_before_ray(tmp_path):
    (tmp_path / "broken.db").write_bytes(b"this is not a database" * 100)
    proc = ratsweep(tmp_path, "run", "quickstart", "--tracking-uri", f"sqlite:///{tmp_path / 'broken.db'}", check=False)
    one_line_exit_2(proc, "file is not a database")


@pytest.mark.parametrize("where", ["a_file", "/proc/ratsweep"])
def test_unwritable_storage_is_one_line_and_starts_no_run(tmp_path, where):
    (tmp_path / "a_file").write_text("")
    proc = ratsweep(tmp_path, "run", "quickstart", "--storage", where, check=False)
    one_line_exit_2(proc, f"--storage: {where}: expected a folder this machine can write")
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize("command", ["best", "report"])
def test_queries_with_a_bad_store_are_one_line_and_create_nothing(tmp_path, command, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = cli_exit(capsys, command, "anything")  # the default ./mlruns.db does not exist
    assert code == 2 and err.count("\n") == 1 and "no MLflow database at" in err
    assert not (tmp_path / "mlruns.db").exists()
    code, _, err = cli_exit(capsys, command, "anything", "--tracking-uri", "nosuchscheme://x")
    assert code == 2 and err.count("\n") == 1 and "cannot use MLflow store 'nosuchscheme://x'" in err


# ---- resume ------------------------------------------------------------------------------------


def test_resume_ignores_tunes_own_temp_files(tmp_path):
    experiment = tmp_path / "sweep-1"
    experiment.mkdir()
    (experiment / ".3f2a-tmp-basic-variant-state-2026-11-24.json").write_bytes(b"")  # left by a SIGKILL
    (experiment / "basic-variant-state-2026-11-24.json").write_text(json.dumps({"ok": True}))
    assert resume.repair_tune_state(experiment) == []


def test_sweep_names_with_glob_characters_are_found_again(tmp_path, monkeypatch):
    folder = tmp_path / "sweep[v1]-20261124-050000"
    folder.mkdir()
    (folder / resume.SWEEP_FILE).write_text("{}")
    (tmp_path / "sweepv-20261124-050000").mkdir()  # what the unescaped pattern would match instead
    monkeypatch.setattr(runner.tune.Tuner, "can_restore", staticmethod(lambda path: True))
    assert resume.latest_sweep(tmp_path, "sweep[v1]") == folder


# ---- what the user sees ------------------------------------------------------------------------


def test_printed_commands_are_shell_quoted(capsys):
    [space] = load("cifar10_table1")
    uri = "sqlite:////tmp/my results/mlruns.db"
    outcome = runner.SweepOutcome(space, "/tmp/my results/x", uri, [])
    runner.print_summary(outcome)
    out = capsys.readouterr().out
    assert "ratsweep best cifar10_table1 --tracking-uri 'sqlite:////tmp/my results/mlruns.db'" in out
    assert "mlflow ui --backend-store-uri 'sqlite:////tmp/my results/mlruns.db'" in out
    assert "cifar10_table1: 0 finished" in out


@pytest.mark.parametrize("name", sorted(registry.experiments()))
def test_describe_lists_every_key_metric_and_model(name, capsys):
    from ratsweep import config

    code, out, _ = cli_exit(capsys, "describe", name)
    experiment = registry.get_experiment(name)
    assert code == 0 and out.startswith(f"{name}: ")
    listed = [line.split()[0] for line in out.split("config keys:\n")[1].splitlines()[1:]]
    assert listed == config.keys(experiment.config)
    assert all(f"{m} ({experiment.modes[m]})" in out for m in experiment.metrics)
    if experiment.family:
        assert all(arch in out for arch in registry.architectures(experiment.family))
    if "rational.init" in listed:
        assert "activation = rational" in out.split("rational.init")[1].splitlines()[0]


def test_a_checkout_is_named_by_its_commit_an_installed_copy_is_not(tmp_path):
    import subprocess

    repo = tmp_path / "plugin"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "tracked.py").write_text("")
    (repo / "untracked.py").write_text("")  # as a package installed into an ignored .venv inside a checkout
    subprocess.run([*git, "add", "tracked.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tracking.git_commit(str(repo / "tracked.py")) == head
    assert tracking.git_commit(str(repo / "untracked.py")) is None


def test_tunes_points_leave_what_does_not_apply_empty(tmp_path):
    """Tune's progress table shows a point's values: a ReLU trial must not show rational.degrees."""
    from ratsweep.sweep import search

    (tmp_path / "s.yaml").write_text("name: s\nexperiment: approx\nmetric: {name: mse, mode: min}\nsearch_space:\n"
                                     "  activation: {grid: [relu, rational]}\n  rational.degrees: {grid: [[3, 2], [5, 4]]}\n")
    [space] = load(str(tmp_path / "s.yaml"))
    generator, param_space, count = search.search_algorithm(space, None)
    points = generator._points_to_evaluate
    assert count == 3 and set(param_space) == {"activation", "rational.degrees"}  # the table's columns
    assert {"activation": "relu", "rational.degrees": None} in points
    assert {"activation": "rational", "rational.degrees": "[5, 4]"} in points


def test_a_signal_outside_tunes_loop_is_a_keyboard_interrupt():
    """Tune handles SIGUSR1 only inside its loop; elsewhere SIGUSR1 would end the process at once."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        runner.Signals.received = None
        runner.Signals.install()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert runner.Signals.received == signal.SIGTERM
        tune_stopped = []
        signal.signal(signal.SIGUSR1, lambda *_: tune_stopped.append(True))  # as Tune's loop installs it
        runner.Signals.received = None
        signal.raise_signal(signal.SIGINT)  # the first signal: Tune's graceful stop, no exception
        assert tune_stopped == [True] and runner.Signals.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second one: stop now
            signal.raise_signal(signal.SIGINT)
    finally:
        runner.Signals.received = None
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_local_session_keeps_what_was_reported_not_what_came_after():
    session = LocalSession()
    weights = torch.zeros(3)
    session.report({"loss": 1.0}, state={"weights": weights, "step": [1]})
    weights.add_(5)
    assert torch.equal(session.states[0]["weights"], torch.zeros(3))


def test_a_checkpoint_copy_cut_short_is_not_resumed_from(tmp_path):
    """resume.repoint_lost_checkpoints skips checkpoint folders whose copy into storage a kill cut short."""
    complete = tmp_path / "checkpoint_000003"
    complete.mkdir()
    (complete / ".metadata.json").write_text(json.dumps({ITERATION_KEY: 4}))
    torch.save({"weights": torch.ones(1000)}, complete / STATE_FILE)
    assert checkpoint_iteration(complete) == 4

    cut = tmp_path / "checkpoint_000004"
    shutil.copytree(complete, cut)
    data = (cut / STATE_FILE).read_bytes()
    (cut / STATE_FILE).write_bytes(data[: len(data) // 2])
    assert checkpoint_iteration(cut) is None
    (cut / STATE_FILE).unlink()
    assert checkpoint_iteration(cut) == 4  # an experiment without state: the metadata is the checkpoint
    (cut / ".metadata.json").unlink()
    assert checkpoint_iteration(cut) is None
