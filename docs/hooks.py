"""MkDocs hook: the reference pages are generated from the code as the site builds, so they cannot
drift from it. A page asks for a part with an HTML comment, `<!-- generated: NAME -->`."""

from __future__ import annotations

import io
import os
import re
import textwrap

MARK = re.compile(r"<!-- generated: ([a-z-]+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARK.sub(lambda match: GENERATORS[match.group(1)](), markdown)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli() -> str:
    """`ratsweep COMMAND --help` for every command, from the parser the CLI itself builds."""
    from ratsweep import cli as ratsweep_cli

    os.environ["COLUMNS"] = "110"  # argparse wraps help to this width
    parser = ratsweep_cli.build_parser()
    out = io.StringIO()
    out.write(f"```text\n{parser.format_help()}```\n")
    commands = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers here only
    for name, sub in commands.choices.items():
        out.write(f"\n## `ratsweep {name}`\n\n```text\n{sub.format_help()}```\n")
    return out.getvalue()


def config() -> str:
    """Every registered experiment: what it reports and reads, and its config keys (config.key_docs)."""
    from ratsweep import config as cfg
    from ratsweep import registry
    from ratsweep.cli import _yaml_text  # a default as `ratsweep describe` writes it

    out = io.StringIO()
    for name, exp in registry.experiments().items():
        out.write(f"\n## `{name}`\n\n{exp.description} (from `{exp.source}`)\n\n")
        metrics = ", ".join(f"`{m}` ({exp.modes[m]})" if m in exp.modes else f"`{m}`" for m in exp.metrics)
        out.write(f"- metrics: {metrics}\n")
        if exp.datasets:
            out.write(f"- datasets: {', '.join(f'`{d}`' for d in exp.datasets)} (`ratsweep data NAME --dir DIR`)\n")
        if exp.family:
            out.write(f"- models: {', '.join(f'`{m}`' for m in registry.architectures(exp.family))}\n")
        if exp.smoke:
            out.write(f"- `--smoke` sets: {', '.join(f'`{k}={v}`' for k, v in exp.smoke.items())}\n")
        out.write("\n| key | expects | default | applies when | meaning |\n|---|---|---|---|---|\n")
        for doc in cfg.key_docs(exp.config):
            default = _yaml_text(doc.default)
            out.write(f"| `{doc.key}` | {_cell(doc.expected)} | `{_cell(default)}` | {_cell(doc.when or 'always')} | {_cell(doc.doc)} |\n")
    return out.getvalue()


def schema() -> str:
    """The validator's own tables: top-level keys, domains, schedulers and their keys, searchers, report keys."""
    from ratsweep.sweep import space

    out = io.StringIO()
    out.write(f"Schema version {space.SCHEMA_VERSION}. A file holds one sweep, or several as YAML documents "
              f"separated by `---`. At most {space.MAX_TRIALS:,} trials per sweep unless `--max-trials` allows more.\n")
    sections = [
        ("Top-level keys", space.TOP_LEVEL),
        ("Domains (each searched key's value: one of these)", space.DOMAINS),
        ("Search algorithms (`search_alg.type`)", space.SEARCH_ALGS),
        ("Report layout (`report:`)", space.REPORT_KEYS),
    ]
    for title, table in sections:
        out.write(f"\n## {title}\n\n| key | meaning |\n|---|---|\n")
        out.writelines(f"| `{key}` | {_cell(meaning)} |\n" for key, meaning in table.items())
    out.write("\n## Schedulers (`scheduler.type`) and their keys\n\n| type | keys |\n|---|---|\n")
    for kind, keys in space.SCHEDULERS.items():
        listed = ", ".join(f"`{k}` ({t.__name__})" for k, t in keys.items()) or "none"
        out.write(f"| `{kind}` | {listed} |\n")
    return out.getvalue()


def paper_tables() -> str:
    """The bundled search spaces that lay out a paper table, and the commands that run and report them."""
    from ratsweep.sweep.space import bundled, load

    out = io.StringIO()
    out.write("| table | search space | experiment | trials | run, then report |\n|---|---|---|---|---|\n")
    for name in bundled():
        if name.startswith("examples/"):  # variants of the tables (e.g. compiled): the tables themselves are listed
            continue
        for sweep in load(name):
            paper = sweep.report.get("paper")
            if paper:
                trials = len(sweep.trials()) if sweep.search_alg["type"] in ("random", "grid") else sweep.num_samples
                commands = f"`ratsweep run {name}`, then `ratsweep report {sweep.name} --paper`"
                out.write(f"| {paper} | `{name}` | `{sweep.experiment}` | {trials} | {commands} |\n")
    return textwrap.dedent(out.getvalue())


def _synthetic(config: dict) -> tuple[dict, str]:
    """Made-up metrics for one planned trial of a table's space (never a result): a fixed draw per
    config, each activation a little apart; the norm-free ViT with ReLU or GELU diverges."""
    import random

    draw = random.Random(repr(sorted(config.items())))
    lift = {"relu": 0.0, "leaky_relu": 0.2, "gelu": 0.4, "silu": 0.1, "rational": 1.0}[config["activation"]]
    noise = draw.gauss(0, 0.3)
    if "task" in config:  # offline RL
        score = 70 + 8 * lift + 3 * noise
        minutes = 50 + 20 * (config["activation"] == "rational") + draw.random()
        return {"final_normalized_score": score, "final_return": 45 * score, "elapsed_min": minutes}, ""
    if "no_norm" in config:  # Tiny ImageNet
        if config["no_norm"] and config["activation"] != "rational":
            return {"best_ema_top1": 0.02}, "diverged: loss is nan at epoch 3"
        epoch = 5 + 0.4 * (config["activation"] == "rational") + draw.random() / 5
        return {"best_ema_top1": 0.56 + 0.01 * lift + 0.03 * config["no_norm"] + 0.002 * noise,
                "elapsed_min": 100 * epoch, "median_epoch_min": epoch}, ""
    base = 0.8 if config.get("recipe", "baseline") == "baseline" else 0.9  # CIFAR-10
    return {"best_test_acc": base + 0.01 * lift + 0.003 * noise + 0.002 * config.get("lsuv", 0)}, ""


def report_examples() -> str:
    """What `report` prints for each paper table's bundled space, on synthetic runs of its whole plan
    (made up to show the layout), and one `--paper` view."""
    from ratsweep import report
    from ratsweep.sweep import results, tracking
    from ratsweep.sweep.space import bundled, load

    out = io.StringIO()
    for name in bundled():
        if name.startswith("examples/"):
            continue
        for space in load(name):
            if not space.report.get("paper"):
                continue
            plan = tracking.sweep_plan(space)
            runs = []
            for i, config in enumerate(plan["trials"]):
                metrics, failure = _synthetic(config)
                runs.append(results.TrialRun(f"r{i}", "FAILED" if failure else "FINISHED", config, {}, metrics, 60.0,
                                             "example", failure=failure))
            sweep = results.Sweep(f"{space.name} (SYNTHETIC example runs)", space.experiment, space.metric, space.mode, runs,
                                  None, [], space.report, plan)
            layout = report.Layout.of(sweep)
            paper = space.report["paper"]
            out.write(f"\n### {paper.replace('table', 'Table ')}: `ratsweep report {space.name}`\n\n```text\n"
                      f"{report.table(sweep, layout, 'md')}```\n")
            if paper == "table5":
                out.write(f"\n`ratsweep report {space.name} --paper --failed-as nan`:\n\n```text\n"
                          f"{report.paper_comparison(sweep, layout, 'md', None, float('nan'))}```\n")
    return out.getvalue()


GENERATORS = {"cli": cli, "config": config, "schema": schema, "paper-tables": paper_tables, "report-examples": report_examples}
