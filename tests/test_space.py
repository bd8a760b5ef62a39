"""Search-space files: schema errors, conditional keys, trial expansion, searchers. No Ray cluster."""

from __future__ import annotations

import textwrap

import pytest

from ratsweep import cli, config, registry
from ratsweep.experiments.approx import ApproxConfig
from ratsweep.experiments.common import RationalConfig
from ratsweep.sweep import search
from ratsweep.sweep.space import bundled, load

HEADER = "name: t\nexperiment: approx\nmetric: {name: mse, mode: min}\n"
# nested anchors: 10^9 values once expanded, a few hundred bytes written
ALIAS_BOMB = "x: &a0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "search_space:\n  activation: {grid: *a8}\n"


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def validate(path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", str(path)])
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "body, key, expected",
    [
        ("name: t\nexperiment: aproxx\nmetric: {name: mse, mode: min}\n", "experiment", "did you mean 'approx'"),
        ("name: t\nexperiment: approx\n", "metric", "missing"),
        (HEADER.replace("min}", "down}"), "metric", "mode: min | max"),
        (HEADER.replace("name: mse", "name: max_abs_errr"), "metric.name", "did you mean 'max_abs_err'"),
        (HEADER + "scheduler: {type: pbt}\nsearch_alg: {type: optuna}\nsearch_space:\n  lr: {uniform: [0.001, 0.01]}\n",
         "search_alg.type", "random or grid with the pbt scheduler"),
        (HEADER + "searchspace: {}\n", "searchspace", "did you mean 'search_space'"),
        (HEADER + "search_space:\n  activaton: {grid: [relu]}\n", "search_space.activaton", "did you mean 'activation'"),
        (HEADER + "search_space:\n  activation: {grid: [relu, gelo]}\n", "search_space.activation.grid", "did you mean 'gelu'"),
        (HEADER + "search_space:\n  rational.init: {choice: [fancy]}\n", "search_space.rational.init.choice", "one of relu"),
        (HEADER + "search_space:\n  rational.version: {grid: [E]}\n", "search_space.rational.version.grid", "one of A, B, C, D"),
        (HEADER + "search_space:\n  rational.degrees: {grid: [[0, 4]]}\n", "search_space.rational.degrees.grid", "from 1 to 8"),
        (HEADER + "search_space:\n  rational.degrees: {grid: [[5]]}\n", "search_space.rational.degrees.grid", "a list of 2 integers"),
        (HEADER + "search_space:\n  rational.lr_mult: {loguniform: [0, 16]}\n", "search_space.rational.lr_mult.loguniform", "low > 0"),
        (HEADER + "search_space:\n  rational.lr_mult: {uniform: [-1, 2]}\n", "search_space.rational.lr_mult.uniform", "> 0"),
        (HEADER + "config: {rational.lr_mult: 0}\n", "config.rational.lr_mult", "> 0"),
        (HEADER + "config: {steps: 1.5}\n", "config.steps", "an integer"),
        (HEADER + "config: {depth: fast}\n", "config.depth", "an integer"),
        (HEADER + "search_space:\n  seed: {randint: [3, 3]}\n", "search_space.seed.randint", "low < high"),
        (HEADER + "search_space:\n  seed: {grid: 3}\n", "search_space.seed.grid", "non-empty list"),
        (HEADER + "resources: {cpu: 1, gpu: -1}\n", "resources.gpu", ">= 0"),
        (HEADER + "resources: {tpu: 1}\n", "resources.tpu", "cpu or gpu"),
        (HEADER + "scheduler: {type: hyperband}\n", "scheduler.type", "fifo, asha, pbt"),
        (HEADER + "scheduler: {type: asha, max_t: 10, grace_period: 20}\n", "scheduler.grace_period", "<= max_t"),
        (HEADER + "search_alg: {type: bayes}\n", "search_alg.type", "optuna"),
        (HEADER + "num_samples: 0\n", "num_samples", ">= 1"),
        (HEADER + "version: 7\n", "version", "expected 1"),
        (HEADER + "report: {rowz: [activation]}\n", "report.rowz", "did you mean 'rows'"),
        (HEADER + "report: {rows: [activaton]}\n", "report.rows", "did you mean 'activation'"),
        (HEADER + "report: {rows: [activation], columns: activation}\n", "report.columns", "not among report.rows"),
        (HEADER + "report: {columns: target, best_of: target}\n", "report.best_of", "other than report.columns"),
        (HEADER + "report: {curve: accuracy}\n", "report.curve", "one of mse, max_abs_err"),
        (HEADER + "report: {percent: 100}\n", "report.percent", "true or false"),
        ("name: t\nexperiment: [approx\n", "not valid YAML", "line"),
        (HEADER + ALIAS_BOMB, "not valid YAML", "expected at most 100,000 values once its aliases"),
        (HEADER + "x: &self [1, *self]\n", "not valid YAML", "an alias refers to a value that contains it"),
        (HEADER + "config: {seed: 99999999999999999999}\n", "config.seed", "an integer from 0 to 4294967295"),
        (HEADER + "search_space:\n  seed: {grid: [0, -1]}\n", "search_space.seed.grid", "an integer from 0 to 4294967295"),
        (HEADER + "search_space:\n  seed: {randint: [0, 10000000000]}\n", "search_space.seed.randint", "from 0 to 4294967295"),
        (HEADER + "search_space:\n  - {activation: {grid: [relu]}, seed: 0}\n  - {activation: rational, depth: 3}\n",
         "search_space[1]", "missing seed; extra depth"),
        (HEADER + "search_space:\n  - {activation: relu}\n  - {activation: {grid: [gelo]}}\n", "search_space[1].activation.grid", "did you mean 'gelu'"),
        (HEADER + "search_space:\n  - {lr: {uniform: [0.1, 1]}}\n  - {lr: {uniform: [0.1, 2]}}\n", "search_space[*].lr", "same range"),
        (HEADER + "search_alg: {type: optuna}\nsearch_space:\n  - {activation: relu}\n  - {activation: gelu}\n",
         "search_alg.type", "random or grid with a union"),
        (HEADER + "scheduler: {type: pbt}\nsearch_space:\n  - {lr: {uniform: [0.1, 1]}}\n  - {lr: {uniform: [0.1, 1]}}\n",
         "scheduler.type", "fifo or asha with a union"),
    ],
)
def test_schema_errors_are_one_line_naming_file_and_key(tmp_path, capsys, body, key, expected):
    path = write(tmp_path, body)
    code, err = validate(path, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and key in err and expected in err, err


def test_valid_space_exits_zero(tmp_path, capsys):
    path = write(tmp_path, HEADER + "search_space:\n  activation: {grid: [relu, rational]}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", str(path)])
    assert exit_info.value.code == 0
    assert "2 distinct trials" in capsys.readouterr().out


def test_conditional_keys_never_duplicate_trials(tmp_path):
    [space] = load(write(tmp_path, HEADER + textwrap.dedent("""\
        num_samples: 3
        search_space:
          activation: {grid: [relu, gelu, rational]}
          rational.degrees: {grid: [[3, 2], [5, 4]]}
          rational.lr_mult: {loguniform: [0.25, 16]}
          seed: {grid: [0, 1]}
        """)))
    trials = space.trials()
    fixed = [t for t in trials if t["activation"] != "rational"]
    rational = [t for t in trials if t["activation"] == "rational"]
    assert len(fixed) == 2 * 2  # relu, gelu x seeds: degrees and lr_mult do not apply, so no repeats
    assert all(set(t) == {"activation", "seed"} for t in fixed)
    assert len(rational) == 2 * 2 * 3  # degrees x seeds x 3 samples of lr_mult
    assert len({repr(sorted(t.items())) for t in trials}) == len(trials)
    assert all(0.25 <= t["rational.lr_mult"] <= 16 for t in rational)


def test_union_of_spaces_runs_each_space_once(tmp_path):
    """A list of spaces (Table 5: three models with norms, then the ViT without) runs the union of
    their trials, each distinct config once; constants in a space are that space's alone."""
    [space] = load(write(tmp_path, HEADER + textwrap.dedent("""\
        search_space:
          - {depth: {grid: [1, 2]}, activation: {grid: [relu, rational]}, rational.degrees: {grid: [[3, 2]]}}
          - {depth: 3, activation: {grid: [relu, rational]}, rational.degrees: {grid: [[3, 2], [5, 4]]}}
          - {depth: 1, activation: relu, rational.degrees: [3, 2]}
        """)))
    trials = space.trials()
    assert [(t["depth"], t["activation"], t.get("rational.degrees")) for t in trials] == [
        (1, "relu", None), (1, "rational", [3, 2]), (2, "relu", None), (2, "rational", [3, 2]),
        (3, "relu", None), (3, "rational", [3, 2]), (3, "rational", [5, 4])]  # the third space repeats the first's
    assert space.trial_bound() == 4 + 4 + 1
    assert space.search_space["depth"].values == (1, 2, 3) and space.search_space["rational.degrees"].values == ([3, 2], [5, 4])
    assert "depth" not in space.config
    [overridden] = load(space.path, {"depth": 4})
    assert not any("depth" in t for t in overridden.trials()) and overridden.build_config(overridden.trials()[0]).depth == 4
    param_space = search.search_algorithm(space, None)[1]
    assert set(param_space) == {"depth", "activation", "rational.degrees"}  # Tune's columns: every searched key


def test_overrides_replace_searched_keys(tmp_path):
    [space] = load(write(tmp_path, HEADER + "search_space:\n  activation: {grid: [relu, gelu]}\n"), {"activation": "silu", "steps": 5})
    assert space.trials() == [{}]
    assert space.build_config({}).activation == "silu" and space.build_config({}).steps == 5
    with pytest.raises(ValueError, match="steps: expected an integer"):
        load(write(tmp_path, HEADER), {"steps": "many"})


def test_nested_config_mapping_and_build(tmp_path):
    [space] = load(write(tmp_path, HEADER + "config: {activation: rational, rational: {degrees: [3, 2], version: B}}\n"))
    built = space.build_config({})
    assert built.rational == RationalConfig(degrees=(3, 2), version="B", lr_mult=1.0)  # approx's default multiplier


@pytest.mark.parametrize("kind", ["optuna", "hyperopt"])
def test_model_based_searchers_skip_configs_that_already_ran(tmp_path, kind):
    [space] = load(write(tmp_path, HEADER + textwrap.dedent(f"""\
        num_samples: 40
        search_alg: {{type: {kind}, seed: 1}}
        search_space:
          activation: {{choice: [relu, gelu, rational]}}
          rational.degrees: {{choice: [[3, 2], [5, 4]]}}
        """)))
    searcher, _, num_samples = search.search_algorithm(space, None)
    assert num_samples == 40
    suggested = []
    for i in range(40):
        config_ = searcher.suggest(f"t{i}")
        if config_ == search.Searcher.FINISHED:
            break
        suggested.append(config_)
        searcher.on_trial_complete(f"t{i}", result={"mse": float(i)})
    # relu, gelu, rational (3, 2), rational (5, 4): four distinct configs, then the space is exhausted
    assert sorted(map(repr, suggested)) == sorted(
        map(repr, [{"activation": "relu"}, {"activation": "gelu"},
                   {"activation": "rational", "rational.degrees": [3, 2]},
                   {"activation": "rational", "rational.degrees": [5, 4]}])
    )


def test_bundled_spaces_are_valid():
    names = bundled()
    assert "quickstart" in names
    for name in names:
        assert load(name), name


def test_config_flatten_leaves_out_what_does_not_apply():
    relu = config.build(ApproxConfig, {"activation": "relu", "rational.degrees": [3, 2]})
    assert not any(k.startswith("rational.") for k in config.flatten(relu))
    rational = config.build(ApproxConfig, {"activation": "rational", "rational.degrees": [3, 2]})
    assert config.flatten(rational)["rational.degrees"] == [3, 2]


def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"approx", "digits"} <= set(registry.experiments())
    assert {"digits_mlp", "digits_cnn"} <= set(registry.architectures("digits"))
    with pytest.raises(KeyError, match="did you mean 'digits'"):
        registry.get_experiment("digit")


# ---- extends ----------------------------------------------------------------------------------


def test_extends_overrides_and_adds_keys_of_a_bundled_space(tmp_path):
    path = write(tmp_path, textwrap.dedent("""\
        extends: cifar10_table1
        name: table1_resnet
        config: {model: timm:resnet10t, epochs: 2, rational: {degrees: [3, 2]}}
        search_space:
          activation: {grid: [relu, rational]}
          swap.share: {grid: [layer, model]}
        report: {paper: null, percent: false}
        """))
    [space] = load(str(path))
    [base] = load("cifar10_table1")
    assert space.name == "table1_resnet" and space.metric == base.metric and space.resources == base.resources
    # config: the base's constants, overridden and added; a key made constant is no longer searched
    assert space.config == {**base.config, "model": "timm:resnet10t", "epochs": 2, "rational.degrees": [3, 2]}
    assert set(space.search_space) == {"activation", "rational.init", "seed", "swap.share"}
    assert space.search_space["activation"].values == ("relu", "rational")
    trials = space.trials()
    assert len(trials) == 2 * 2 * 5 and all(t["rational.init"] == "leaky_relu" for t in trials if t["activation"] == "rational")
    # report: merged key by key; null removes the base's paper table
    assert "paper" not in space.report and space.report["percent"] is False and space.report["rows"] == ["model", "activation"]
    assert "extends" not in space.document and space.document["name"] == "table1_resnet"


def test_extends_applies_a_search_space_to_every_space_of_a_union(tmp_path):
    write(tmp_path, HEADER + textwrap.dedent("""\
        config: {steps: 5}
        search_space:
          - {activation: {grid: [relu]}, rational.degrees: {grid: [[3, 2]]}, seed: {grid: [0]}}
          - {activation: {grid: [rational]}, rational.degrees: {grid: [[3, 2], [5, 4]]}, seed: {grid: [0]}}
        """), "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: more_seeds\nsearch_space: {seed: {grid: [0, 1, 2]}}\nconfig: {steps: 7}\n",
                  "child.yaml")
    [space] = load(str(child))
    assert len(space.parts) == 2 and all(part["seed"].values == (0, 1, 2) for part in space.parts)
    assert space.config["steps"] == 7
    assert len(space.trials()) == (1 + 2) * 3  # relu once per seed (degrees do not apply), rational x 2 degrees


def test_extends_chains_resolve_relative_to_each_file(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path, HEADER + "config: {steps: 5}\nsearch_space: {activation: {grid: [relu, gelu]}}\n", "a/base.yaml")
    write(tmp_path, "extends: base.yaml\nname: middle\nconfig: {steps: 6}\n", "a/middle.yaml")
    top = write(tmp_path, "extends: a/middle.yaml\nname: top\nsearch_space: {activation: {grid: [rational]}}\n", "top.yaml")
    [space] = load(str(top))
    assert space.name == "top" and space.config["steps"] == 6 and space.search_space["activation"].values == ("rational",)


@pytest.mark.parametrize("body, expected", [
    ("extends: cifar10_tabel1\nname: x\n", "extends: cifar10_tabel1: no such file, and unknown search space 'cifar10_tabel1' "
                                           "(did you mean 'cifar10_table1'?)"),
    ("extends: cifar10_table1\n", "name: an extending space needs a name of its own (the base's 'cifar10_table1'"),
    ("extends: cifar10_table1\nname: cifar10_table1\n", "name: an extending space needs a name of its own"),
    ("extends: space.yaml\nname: again\n", "extends: space.yaml extends this file again (a cycle)"),
    ("extends: [cifar10_table1]\nname: x\n", "extends: expected a bundled space's name or a path to a YAML file"),
    ("extends: quickstart\nname: x\n", "quickstart.yaml holds 2 sweeps (YAML documents); expected one"),
])
def test_extends_errors_are_one_line_naming_the_file(tmp_path, capsys, body, expected):
    path = write(tmp_path, body)
    code, err = validate(path, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"ratsweep validate: {path}: ") and expected in err, err


def test_validate_show_prints_the_merged_space(tmp_path, capsys):
    path = write(tmp_path, "extends: cifar10_table1\nname: mine\nconfig: {model: torchvision:resnet18}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", str(path), "--show"])
    assert exit_info.value.code == 0
    import yaml

    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "mine" and shown["experiment"] == "cifar10" and "extends" not in shown
    assert shown["config"]["model"] == "torchvision:resnet18" and "model" not in shown["search_space"]
    assert shown["search_space"]["seed"] == {"grid": [0, 1, 2, 3, 4]}


def test_extends_with_a_list_replaces_the_search_space_and_null_drops_the_constants(tmp_path):
    write(tmp_path, HEADER + "config: {steps: 5, report_every: 5}\nsearch_space: {activation: {grid: [relu, gelu]}}\n", "base.yaml")
    child = write(tmp_path, textwrap.dedent("""\
        extends: base.yaml
        name: replaced
        config: null
        search_space:
          - {activation: {grid: [relu]}, steps: {grid: [3]}}
          - {activation: {grid: [rational]}, steps: {grid: [4]}}
        """), "child.yaml")
    [space] = load(str(child))
    assert space.config == {} and [part["steps"].values for part in space.parts] == [(3,), (4,)]
    keep = write(tmp_path, "extends: base.yaml\nname: kept\nsearch_space: [{steps: {grid: [3]}}]\n", "keep.yaml")
    [space] = load(str(keep))
    assert space.config == {"report_every": 5} and set(space.search_space) == {"steps"}  # steps searched now, not constant
