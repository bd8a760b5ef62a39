"""`ratsweep report` on a stored mock sweep: trial runs written straight into an MLflow store the way
the sweep's tracking callback writes them (no Ray), then read back as the paper lays its tables out."""

from __future__ import annotations

import math
import statistics
import textwrap

import pytest
from mlflow.entities import Metric, Param

from ratsweep import cli
from ratsweep import config as cfg
from ratsweep import report
from ratsweep.report import published as paper
from ratsweep.sweep import names, results, tracking
from ratsweep.sweep.space import UserError, load

SPACE = """\
name: mock_table2
experiment: cifar10
metric: {name: best_test_acc, mode: max}
resources: {cpu: 1, gpu: 0.25}
config: {recipe: augmented, model: vgg4, amp: false}
search_space:
  activation: {grid: [relu, gelu, rational]}      # listed out of alphabetical order on purpose
  rational.init: {grid: [leaky_relu, gelu]}
  norm: {grid: [none, group]}
  lsuv: {grid: [false, true]}
  seed: {grid: [0, 1, 2]}
report:
  rows: [model, activation, rational.init]
  columns: norm
  best_of: lsuv
  percent: true
  labels: {relu: ReLU, gelu: GELU, "rational | leaky_relu": Rational 1, "rational | gelu": Rational 2, "norm=none": no GN, "norm=group": GN}
  paper: table2
"""
BASE = {("relu", None): 0.80, ("gelu", None): 0.79, ("rational", "leaky_relu"): 0.82, ("rational", "gelu"): 0.83}
GROUP_NORM = {("relu", None): 0.02, ("gelu", None): 0.025, ("rational", "leaky_relu"): -0.03, ("rational", "gelu"): -0.02}
DIVERGED = ("relu", None, "none", True, 2)  # reported 0.61 before its loss went NaN
CRASHED = ("gelu", None, "group", True, 2)
NEVER_RAN = ("gelu", None, "group", True, 1)
COMMON = {"model": "vgg4", "recipe": "augmented", "amp": False, "compile": False, "epochs": 60, "batch_size": 128, "lr": 0.02}
RERUN = {**COMMON, "activation": "rational", "rational.degrees": [5, 4], "rational.version": "A", "rational.init": "gelu",
         "rational.lr_mult": 0.5, "norm": "none", "lsuv": True, "seed": 0}
SMOKED = {**COMMON, "activation": "relu", "norm": "group", "lsuv": False, "seed": 0}


def value(c: dict) -> float:
    arm = (c["activation"], c.get("rational.init"))
    return BASE[arm] + (GROUP_NORM[arm] if c["norm"] == "group" else 0) + 0.005 * c["lsuv"] + 0.001 * c["seed"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, sweep name): 48 planned trials; 45 finished, one diverged, one crashed, one never ran."""
    root = tmp_path_factory.mktemp("report")
    (root / "mock.yaml").write_text(SPACE)
    [space] = load(str(root / "mock.yaml"))
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = tracking.client(uri)
    experiment = tracking.ensure_experiment(client, space.name, uri, space)
    parent = tracking.start_sweep_run(client, experiment, space, "mock", smoke=False)
    for i, trial in enumerate(space.trials()):
        config = cfg.flatten(space.build_config(trial))
        which = (config["activation"], config.get("rational.init"), config["norm"], config["lsuv"], config["seed"])
        if which == NEVER_RAN:
            continue
        tags = {names.PARENT: parent, names.KIND: "trial", names.TRIAL: f"t{i}",
                "device": "NVIDIA H100 80GB HBM3", "ray.node_id": "head"}
        if which == DIVERGED:
            tags["ratsweep.failure"] = "diverged: loss is nan at epoch 7"
        elif which == CRASHED:
            tags["ratsweep.failure"] = "RuntimeError: CUDA error: an illegal memory access was encountered"
        start = 60_000 * (i // 4 + 1)  # four at a time, a minute each
        run_id = client.create_run(experiment, start_time=start, tags=tags).info.run_id
        metric = 0.61 if which == DIVERGED else value(config)
        client.log_batch(run_id, params=[Param(k, tracking._param(v)) for k, v in config.items()],
                         metrics=[] if which == CRASHED else [Metric("best_test_acc", metric, 0, 1)])
        client.set_terminated(run_id, "FAILED" if which in (DIVERGED, CRASHED) else "FINISHED", end_time=start + 60_000)
    # the same sweep run again later (one config), and a --smoke run of another: neither may change a cell
    again = tracking.start_sweep_run(client, experiment, space, "again", smoke=False)
    smoke = tracking.start_sweep_run(client, experiment, space, "smoke", smoke=True)
    for parent, config, metric in ((again, RERUN, value(RERUN)), (smoke, SMOKED, 0.99)):
        tags = {names.PARENT: parent, names.KIND: "trial", names.TRIAL: "t-later"}
        run_id = client.create_run(experiment, start_time=10**12, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, tracking._param(v)) for k, v in config.items()],
                         metrics=[Metric("best_test_acc", metric, 0, 1)])
        client.set_terminated(run_id, "FINISHED", end_time=10**12 + 60_000)
    return uri, space.name


def rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| vgg4")]


def cell(line: str, index: int) -> str:
    return line.strip("|").split("|")[index].strip()


def test_rows_and_columns_follow_the_space_with_its_labels(store):
    sweep = results.load_sweep(*store)
    md = report.table(sweep, report.Layout.of(sweep), "md")
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert header == "| model | activation | rational.init | no GN | GN | minutes |"  # none before group, as listed
    assert [cell(line, 1) for line in rows(md)] == ["ReLU", "GELU", "Rational 1", "Rational 2"]  # the grid's order
    assert [cell(line, 2) for line in rows(md)] == ["-", "-", "", ""]  # a label spanning activation | init
    assert "mean wall time of a finished trial; each trial asked for 1 CPU and 0.25 GPU, up to 4 per GPU" in md
    assert "at most 4 trials ran at once on one node's GPUs" in md
    assert all(cell(line, 5) == "1.00" for line in rows(md))


def test_trials_at_once_are_counted_per_node():
    def run(node, start, end):
        return results.TrialRun("r", "FINISHED", {}, {}, {}, None, "s", span=(start, end), node=node)

    runs = [run("a", 0, 10), run("a", 5, 15), run("a", 10, 20), run("b", 0, 30), run("b", 1, 2)]
    assert report.most_at_once(runs) == 2  # "a": the third starts as the first ends


def test_best_and_second_best_are_marked_per_column(store):
    sweep = results.load_sweep(*store)
    relu, gelu, rational1, rational2 = rows(report.table(sweep, report.Layout.of(sweep), "md"))
    assert cell(rational2, 3).startswith("**83.60 ± 0.10 (3) lsuv=True**")  # no GN: best
    assert cell(rational1, 3).startswith("*82.60 ± 0.10 (3) lsuv=True*") and not cell(rational1, 3).startswith("**")
    assert cell(relu, 4).startswith("**82.60 ± 0.10 (3)") and cell(gelu, 4).startswith("*82.00 (1")  # GN: ReLU best, GELU second
    assert "*" not in cell(gelu, 3) + cell(rational1, 4)
    latex = report.table(sweep, report.Layout.of(sweep), "latex")
    assert r"\textbf{83.60 $\pm$ 0.10 (3) lsuv=True}" in latex and r"\underline{82.60 $\pm$ 0.10 (3) lsuv=True}" in latex


def test_every_cell_counts_finished_diverged_failed_and_missing_seeds(store):
    sweep = results.load_sweep(*store)
    relu, gelu, _, _ = rows(report.table(sweep, report.Layout.of(sweep), "md"))
    assert cell(relu, 3) == "80.55 ± 0.07 (2, 1 diverged) lsuv=True"  # the two finished seeds; the NaN one counted
    assert cell(gelu, 4) == "*82.00 (1, 1 failed, 1 missing) lsuv=True*"  # one seed: no std
    csv_lines = report.table(sweep, report.Layout.of(sweep), "csv").splitlines()
    assert csv_lines[0] == ("model,activation,rational.init,norm,lsuv,best_test_acc_mean,best_test_acc_std,n,"
                            "diverged,failed,missing,mark,minutes,caveat")
    gelu_group = next(line for line in csv_lines if line.startswith("vgg4,gelu,-,group,"))
    assert gelu_group.split(",")[7:12] == ["1", "0", "1", "1", "second"]


def test_a_config_that_ran_again_counts_once_and_smoke_runs_not_at_all(store):
    sweep = results.load_sweep(*store)
    md = report.table(sweep, report.Layout.of(sweep), "md")
    assert "1 earlier runs of configs that ran again are left out (--all-runs counts them)" in md
    assert cell(rows(md)[3], 3).startswith("**83.60 ± 0.10 (3)")  # Rational 2, no GN: still three seeds
    everything = results.load_sweep(*store, include_smoke=True, all_runs=True)
    by_key = {g.key: g for g in report.groups(everything, ["activation", "rational.init", "norm", "lsuv"])}
    assert len(by_key[("rational", "gelu", "none", "True")].finished) == 4
    assert len(by_key[("relu", "-", "group", "False")].finished) == 4  # the smoke run's too
    assert max(by_key[("relu", "-", "group", "False")].values) == pytest.approx(0.99)


def test_an_mlflow_experiment_that_is_not_a_sweep_is_one_line(store):
    uri, _ = store
    tracking.client(uri).create_experiment("someone_elses")
    with pytest.raises(results.NotFound, match="someone_elses: an MLflow experiment, but not a ratsweep sweep"):
        results.load_sweep(uri, "someone_elses")


def test_report_names_unknown_layout_keys_with_a_suggestion(store, capsys):
    uri, name = store
    with pytest.raises(SystemExit) as done:
        cli.main(["report", name, "--tracking-uri", uri, "--group-by", "activaton"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "--group-by: unknown key 'activaton' (did you mean 'activation'?)" in err
    with pytest.raises(SystemExit) as done:
        cli.main(["report", name, "--tracking-uri", uri, "--columns", "nrom"])
    assert done.value.code == 2 and "--columns: unknown key 'nrom' (did you mean 'norm'?)" in capsys.readouterr().err


def test_a_diverged_trial_keeps_its_best_before_divergence(store):
    sweep = results.load_sweep(*store)
    [diverged] = [r for r in sweep.runs if r.outcome(sweep.metric) == "diverged"]
    assert diverged.metrics["best_test_acc"] == pytest.approx(0.61) and diverged.status == "FAILED"
    assert sweep.ranked() and diverged not in sweep.ranked()  # never a best config


def test_failed_as_counts_seeds_as_the_authors_did(store):
    """Diverged: its best before divergence; failed or missing: the given value. The better LSUV setting
    is chosen on those means, so both cells switch to LSUV off."""
    sweep = results.load_sweep(*store)
    md = report.table(sweep, report.Layout.of(sweep), "md", failed_as=0.1)
    relu, gelu, _, _ = rows(md)
    assert cell(relu, 3) == "80.10 ± 0.10 (3) lsuv=False"  # lsuv=True: (0.805 + 0.806 + 0.61) / 3 = 74.03
    assert cell(gelu, 4).startswith("*81.60 ± 0.10 (3) lsuv=False")  # lsuv=True: (0.82 + 0.1 + 0.1) / 3
    group = report.groups(sweep, ["activation", "norm", "lsuv"], failed_as=0.1)
    by_key = {g.key: g for g in group}
    assert sorted(by_key[("relu", "none", "True")].values) == pytest.approx([0.61, 0.805, 0.806])
    assert sorted(by_key[("gelu", "group", "True")].values) == pytest.approx([0.1, 0.1, 0.82])
    assert "failed or missing seed as 10.00" in md


def test_paper_view_puts_each_cell_beside_the_published_number(store):
    sweep = results.load_sweep(*store)
    md = report.paper_comparison(sweep, report.Layout.of(sweep), "md", None)
    assert "Table 2" in md
    line = next(line for line in rows(md) if "Rational 2" in line and "| no GN |" in line)
    published = next(e for e in paper.get("table2").cells if e["model"] == "vgg4" and e.get("rational.init") == "gelu" and e["norm"] == "none")
    ours = [0.835, 0.836, 0.837]
    diff = 100 * statistics.fmean(ours) - published["mean"]
    se = math.sqrt((100 * statistics.stdev(ours)) ** 2 / 3 + published["std"] ** 2 / 5)
    assert cell(line, 5) == "90.67 ± 0.17 (5)" and cell(line, 6) == f"{diff:+.2f}" and cell(line, 7) == f"{diff / se:+.1f}"
    assert "published but not in this sweep's table (16)" in md  # vgg8, silu and leaky_relu were not run
    csv_lines = report.paper_comparison(sweep, report.Layout.of(sweep), "csv", None).splitlines()
    assert csv_lines[0] == "model,activation,rational.init,norm,ours,paper,difference,z" and len(csv_lines) == 1 + 8


def test_paper_view_without_a_paper_number_or_table_says_so(store, tmp_path):
    sweep = results.load_sweep(*store)
    layout = report.Layout.of(sweep)
    layout.rows = ["activation"]  # the paper's cells name a model: nothing matches this layout
    md = report.paper_comparison(sweep, layout, "md", None)
    assert all("no paper number" in line for line in md.splitlines() if line.startswith("| ReLU") or line.startswith("| GELU"))
    layout.paper = None
    with pytest.raises(UserError, match="names no paper table.*table1"):
        report.paper_comparison(sweep, layout, "md", None)
    with pytest.raises(UserError, match="publishes final_normalized_score"):
        report.paper_comparison(sweep, layout, "md", "table3")


def test_report_command_prints_the_paper_view(store, capsys):
    uri, name = store
    with pytest.raises(SystemExit) as done:
        cli.main(["report", name, "--tracking-uri", uri, "--paper", "--failed-as", "0.1"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "against the paper's Table 2" in out and "with --failed-as 0.1" in out


def test_population_std_row_marks_decimals_and_caveats():
    """The RL tables' layout: std with ddof 0, best per row across the activation columns, two
    decimals, and a cell whose runs used substitute anchors marked with its caveat underneath."""
    def run(activation, value, caveat=None):
        return results.TrialRun(f"r{activation}{value}", "FINISHED", {"task": "hopper", "activation": activation},
                                {"caveat": caveat} if caveat else {}, {"final_normalized_score": value}, 60.0, "s")

    runs = [run("relu", 90.0), run("relu", 92.0), run("gelu", 80.0), run("gelu", 81.0, "D4RL anchors"), run("rational", 95.0), run("rational", 96.0)]
    sweep = results.Sweep("rl", "iql", "final_normalized_score", "max", runs, None, [], {},
                          plan={"order": {"activation": ["relu", "gelu", "rational"]}})
    layout = report.Layout(["task"], "activation", std="population", best="per_row", decimals=2)
    out = report.table(sweep, layout, "md")
    [row] = [line for line in out.splitlines() if line.startswith("| hopper")]
    assert cell(row, 1) == "*91.00 ± 1.00 (2)*"  # population std of 90, 92 is 1 (the sample std would be 1.41)
    assert cell(row, 2) == "80.50 ± 0.50 † (2)" and cell(row, 3) == "**95.50 ± 0.50 (2)**"
    assert "mean ± std (population)" in out and out.rstrip().endswith("† D4RL anchors") and "best per row" in out
    sample = report.table(sweep, report.Layout(["task"], "activation", decimals=2), "md")
    assert "**91.00 ± 1.41 (2)**" in sample and "**80.50" in sample  # per column by default: each cell is its column's best
    assert report.table(sweep, layout, "csv").splitlines()[2].endswith(",D4RL anchors")


def test_paper_tables_hold_every_published_cell():
    tables = paper.tables()
    assert sorted(tables) == ["table1", "table2", "table3", "table4", "table5"]
    assert [len(tables[t].cells) for t in sorted(tables)] == [10, 24, 12, 12, 12]
    assert sum(bool(e.get("failed")) for e in tables["table5"].cells) == 2  # norm-free ViT with ReLU / GELU
    for table in tables.values():
        assert all("mean" in e or e.get("failed") for e in table.cells)
        assert len({tuple(sorted(table.where(e).items())) for e in table.cells}) == len(table.cells)  # no cell twice


@pytest.mark.parametrize("name", ["cifar10_table1", "cifar10_table2"])
def test_table_spaces_pin_the_papers_precision_and_name_their_table(name):
    [space] = load(name)
    assert space.config["amp"] is False and "amp" not in space.search_space
    assert space.build_config({}).amp is False
    assert space.report["paper"] == name.replace("cifar10_", "") and space.report["labels"]["silu"] == "Swish"


@pytest.mark.parametrize("report, message", [
    ("{paper: table9}", "unknown paper table 'table9'"),
    ("{paper: table3}", "publishes iql results"),
    ("{labels: [a, b]}", "expected a mapping of shown values to labels"),
    ("{also: [test_acc]}", "report.also: expected a mapping of metrics to decimals"),
    ("{also: {test_ac: 2}}", "report.also.test_ac: expected one of .*did you mean 'test_acc'"),
    ("{also: {test_acc: 12}}", "report.also.test_acc: expected decimals, an integer from 0 to 8"),
])
def test_bad_report_sections_are_one_line(tmp_path, report, message):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: bad
        experiment: cifar10
        metric: {{name: best_test_acc, mode: max}}
        report: {report}
        """))
    with pytest.raises(UserError, match=message) as error:
        load(str(path))
    assert len(str(error.value).splitlines()) == 1


# ---- Tables 3-5: recorded sweeps of the bundled spaces (synthetic numbers, never results) ----------


def record(root, space_name: str, outcome) -> tuple[str, str]:
    """(URI, sweep name): every planned trial of a bundled space written into an MLflow store as the
    tracking callback writes it; `outcome(config)` gives (metric history {name: [(step, value)]},
    failure tag or None) for a trial, or None for one that never ran."""
    [space] = load(space_name)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = tracking.client(uri)
    experiment = tracking.ensure_experiment(client, space.name, uri, space)
    parent = tracking.start_sweep_run(client, experiment, space, "recorded", smoke=False)
    for i, trial in enumerate(space.trials()):
        config = cfg.flatten(space.build_config(trial))
        made = outcome(config)
        if made is None:
            continue
        history, failure = made
        tags = {names.PARENT: parent, names.KIND: "trial", names.TRIAL: f"t{i}", **({names.FAILURE: failure} if failure else {})}
        start = 60_000 * i
        run_id = client.create_run(experiment, start_time=start, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, tracking._param(v)) for k, v in config.items()],
                         metrics=[Metric(k, v, 0, step) for k, points in history.items() for step, v in points])
        client.set_terminated(run_id, "FAILED" if failure else "FINISHED", end_time=start + 60_000)
    return uri, space.name


RL_SCORE = {"gelu": 80.0, "relu": 84.0, "silu": 78.0, "rational": 94.0}


def rl_trial(config):
    """Hopper and walker2d; halfcheetah never ran. ReLU seed 4 has no finite evaluation (dropped);
    SiLU seed 3 skipped two non-finite evaluations; rational seed 2 never ran."""
    task, activation, seed = config["task"], config["activation"], config["seed"]
    if task == "halfcheetah" or (activation, seed) == ("rational", 2):
        return None
    final = RL_SCORE[activation] + seed + (10 if task == "hopper" else 0)
    curve = [(step, final * step / 50_000) for step in range(10_000, 60_000, 10_000)]
    history = {"normalized_score": curve, "final_normalized_score": [(50_000, final)],
               "final_return": [(50_000, 40 * final)], "elapsed_min": [(50_000, 50.0 + seed + (20 if activation == "rational" else 0))],
               "nonfinite_evaluations": [(50_000, 2 if (activation, seed) == ("silu", 3) else 0)]}
    if (activation, seed) == ("relu", 4):
        return {"normalized_score": curve[:1], "elapsed_min": [(10_000, 9.0)]}, "diverged: no finite evaluation in 30"
    return history, None


@pytest.fixture(scope="module")
def rl_store(tmp_path_factory):
    return record(tmp_path_factory.mktemp("rl"), "rl_iql_table3", rl_trial)


def test_rl_tables_show_score_return_and_time_per_task_and_activation(rl_store):
    sweep = results.load_sweep(*rl_store)
    md = report.table(sweep, report.Layout.of(sweep), "md")
    lines = md.splitlines()
    assert "| task | activation | Norm score | Return | Time (min) |" in lines and "minutes" not in md.split("\n\n")[1]
    hopper = [line for line in lines if line.startswith("| Hopper |")]
    relu = next(line for line in hopper if "| ReLU |" in line)
    assert cell(lines[lines.index(hopper[0]) - 1], 2) == "- (0, 5 missing)"  # HalfCheetah Rational: never ran
    # ReLU on hopper: seeds 0-3 finished (population std of 94..97), seed 4 dropped and counted
    values = [94.0, 95.0, 96.0, 97.0]
    assert cell(relu, 2) == f"*{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f} (4, 1 diverged)*"  # second
    assert cell(relu, 3) == f"{40 * statistics.fmean(values):.2f} ± {40 * statistics.pstdev(values):.2f}"
    assert cell(relu, 4) == f"{statistics.fmean([50.0, 51.0, 52.0, 53.0]):.0f} ± {statistics.pstdev([50.0, 51, 52, 53]):.0f}"
    rational = next(line for line in hopper if "| Rational |" in line)
    assert cell(rational, 2) == "**106.00 ± 1.58 (4, 1 missing)**"  # best of the task; seed 2 never ran
    assert cell(rational, 4) == "72 ± 2"  # 70, 71, 73, 74: population std 1.58
    silu = next(line for line in hopper if "| SiLU |" in line)
    assert "†" in cell(silu, 2) and md.rstrip().endswith("the last 5 finite ones (table_RL.py)")
    csv_lines = report.table(sweep, report.Layout.of(sweep), "csv").splitlines()
    assert csv_lines[0].startswith("task,activation,final_normalized_score_mean,final_normalized_score_std,"
                                   "final_return_mean,final_return_std,elapsed_min_mean,elapsed_min_std,n,diverged")


def test_rl_paper_view_diffs_every_published_column(rl_store):
    sweep = results.load_sweep(*rl_store)
    md = report.paper_comparison(sweep, report.Layout.of(sweep), "md", None)
    lines = md.splitlines()
    assert "| task | activation | figure | ours | paper | ours - paper | z |" in lines
    assert "the authors' rule for failed runs here: table_RL.py never stops a run on NaN" in md
    start = next(i for i, line in enumerate(lines) if line.startswith("| Hopper | Rational |"))
    score, ret, time = lines[start:start + 3]
    published = next(e for e in paper.get("table3").cells if e["task"] == "hopper" and e["activation"] == "rational")
    assert cell(score, 2) == "Norm score" and cell(score, 4) == "91.58 ± 0.66 (5)"
    assert cell(ret, 0) == "" and cell(ret, 2) == "Return" and cell(ret, 4) == "3534.30 ± 25.55 (5)"
    ours = [40 * (94.0 + 10 + s) for s in (0, 1, 3, 4)]
    diff = statistics.fmean(ours) - published["final_return"]["mean"]
    se = math.sqrt(statistics.stdev(ours) ** 2 / 4 + (published["final_return"]["std"] * math.sqrt(5 / 4)) ** 2 / 5)
    assert cell(ret, 5) == f"{diff:+.2f}" and cell(ret, 6) == f"{diff / se:+.1f}"
    assert cell(time, 2) == "Time (min)" and cell(time, 4) == "73.00 ± 1.00 (5)" and cell(time, 5) == f"{statistics.fmean([70, 71, 73, 74]) - 73:+.2f}"
    cheetah = next(line for line in lines if line.startswith("| HalfCheetah | GELU |"))  # planned, never ran: no difference
    assert cell(cheetah, 3) == "- (0, 5 missing)" and cell(cheetah, 4) == "79.32 ± 7.04 (5)" and cell(cheetah, 5) == ""
    csv_lines = report.paper_comparison(sweep, report.Layout.of(sweep), "csv", None).splitlines()
    assert csv_lines[0] == "task,activation,figure,ours,paper,difference,z" and len(csv_lines) == 1 + 12 * 3


def t5_trial(config):
    """One run per cell, 100 epochs of 5-6 minutes; the norm-free ViT with ReLU or GELU diverges at
    epoch 3 after a best of 2 %; Swin GELU never ran."""
    model, activation, no_norm = config["model"], config["activation"], config["no_norm"]
    if (model, activation) == ("swin", "gelu"):
        return None
    epoch = 5.0 + 0.5 * (activation == "rational") + 0.1 * ["cait", "swin", "vit"].index(model)
    if no_norm and activation != "rational":
        return {"best_ema_top1": [(3, 0.02)], "elapsed_min": [(2, 2 * epoch)]}, "diverged: loss is nan at epoch 3"
    best = {"relu": 0.55, "gelu": 0.56, "rational": 0.57}[activation] + 0.03 * no_norm
    return {"best_ema_top1": [(100, best)], "elapsed_min": [(100, 100 * epoch + 1)], "median_epoch_min": [(100, epoch)]}, None


@pytest.fixture(scope="module")
def t5_store(tmp_path_factory):
    return record(tmp_path_factory.mktemp("t5"), "tinyimagenet_table5", t5_trial)


def test_table5_shows_each_cells_own_time_and_median_epoch(t5_store):
    sweep = results.load_sweep(*t5_store)
    md = report.table(sweep, report.Layout.of(sweep), "md")
    lines = md.splitlines()
    assert "| model | no_norm | activation | EMA val top-1 | Time (min) | median epoch (min) |" in lines
    cait = [line for line in lines if line.startswith("| CaiT |")]
    assert [cell(line, 4) for line in cait] == ["501", "501", "551"]  # per cell, never a row's mean
    assert [cell(line, 5) for line in cait] == ["5.00", "5.00", "5.50"]
    assert cell(cait[2], 3) == "**57.00 (1)**"
    assert len([line for line in lines if line.startswith("| Swin |")]) == 3  # its GELU run never started: counted missing
    no_norm = [line for line in lines if "ViT no norm" in line]
    assert len(no_norm) == 3 and cell(no_norm[0], 3) == "fails to train (0, 1 diverged)" and cell(no_norm[2], 3) == "**60.00 (1)**"
    dropped = report.table(sweep, report.Layout.of(sweep), "md", failed_as=math.nan)
    assert "with --failed-as nan" in dropped
    row = next(line for line in dropped.splitlines() if "ViT no norm" in line)
    assert cell(row, 3) == "*2.00 (0, 1 diverged)*"  # the diverged run counts at its best before NaN (second of its block)
    assert "- (0, 1 missing)" in dropped  # Swin GELU: no run, no number


def test_table5_paper_view_diffs_accuracy_and_time(t5_store):
    sweep = results.load_sweep(*t5_store)
    md = report.paper_comparison(sweep, report.Layout.of(sweep), "md", None)
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| CaiT |  | Rational |"))
    accuracy, time = lines[start:start + 2]
    assert cell(accuracy, 5) == "56.15 (1)" and cell(accuracy, 6) == "+0.85" and cell(accuracy, 7) == "n/a"
    assert cell(time, 3) == "Time (min)" and cell(time, 5) == "526.00 (1)" and cell(time, 6) == "+25.00"
    relu = next(i for i, line in enumerate(lines) if "| ViT no norm |" in line)
    assert "fails to train" in lines[relu] and "table_imagenet.py takes the max" in md


def test_report_plots_bars_with_the_papers_numbers_and_rl_curves(rl_store, t5_store, tmp_path):
    for store_, shape in ((rl_store, 2), (t5_store, 4)):
        sweep = results.load_sweep(*store_)
        layout = report.Layout.of(sweep)
        files = report.plots(sweep, layout, tmp_path / sweep.name)
        assert {f.name for f in files} >= {"learning_curves.png", "table_bars.png"}
        from matplotlib.image import imread
        image = imread(tmp_path / sweep.name / "table_bars.png")
        assert image.shape[0] > 300 and image.shape[1] > 300  # one panel per task or model
        report.log_report(sweep, files, tmp_path / sweep.name)
        attached = {a.path for a in sweep.client.list_artifacts(sweep.sweep_run_ids[0], "report")}
        assert "report/table_bars.png" in attached and "report/learning_curves.png" in attached
