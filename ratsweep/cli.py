"""The `ratsweep` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from ratsweep.errors import EXIT_INCOMPLETE, EXIT_OK, EXIT_TRIALS_FAILED  # light: no Ray, MLflow or torch


def check(args: argparse.Namespace) -> int:
    """Which rational kernels run here: a forward and a backward on each device, checked against the
    reference path. Exit 1 if one is broken (or missing, for a device asked for with --device)."""
    import torch

    import ratsweep
    from ratsweep.rational import cpu, cuda, reference
    from ratsweep.rational._native import KernelError

    print(f"ratsweep {ratsweep.__version__} | torch {torch.__version__} | python {platform.python_version()}")
    wanted = args.device or ["cpu", "cuda"]
    devices = []
    if "cpu" in wanted:
        devices.append(("cpu", torch.device("cpu"), cpu, f"C++ compiler: {cpu.compiler() or 'none (set CXX)'}"))
    failed = False
    if "cuda" in wanted and torch.cuda.is_available():
        note = "CuPy installed" if cuda.available() else "CuPy missing: pip install 'ratsweep[cuda12]' or '[cuda13]'"
        devices.append(("cuda", torch.device("cuda"), cuda, f"{torch.cuda.get_device_name()}, {note}"))
    elif "cuda" in wanted:
        print("cuda kernels: no CUDA device")
        failed = args.device is not None
    for name, device, backend, note in devices:
        g = torch.Generator().manual_seed(0)
        x, dy = torch.randn(1 << 16, generator=g).to(device), torch.randn(1 << 16, generator=g).to(device)
        a, b = torch.randn(6, generator=g).to(device), torch.randn(4, generator=g).to(device)
        t0 = time.perf_counter()
        try:
            got = (backend.forward(x, a, b, "A"), *backend.backward(dy, x, a, b, "A"))
        except KernelError as e:
            print(f"{name} kernels: FAILED ({note})\n  {e}")
            failed = True
            continue
        exact = (reference.forward(x.double(), a.double(), b.double(), "A"),
                 *reference.backward(dy.double(), x.double(), a.double(), b.double(), "A"))
        err = max(((u.double() - v).abs().max() / v.abs().max().clamp_min(1e-30)).item() for u, v in zip(got, exact))
        status = "ok" if err < 1e-4 else "WRONG RESULTS"
        failed |= status != "ok"
        print(f"{name} kernels: {status} ({note}; first forward and backward {time.perf_counter() - t0:.1f} s, "
              f"largest relative error {err:.1e})")
    return EXIT_INCOMPLETE if failed else EXIT_OK


def _overrides(pairs: list[str]) -> dict:
    """--set key=value (value parsed as YAML: 3, 0.5, true, [5, 4], gelu)."""
    import yaml

    from ratsweep.config import yaml_load
    from ratsweep.errors import UserError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set: expected key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--set: {pair!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return out


def _load(args: argparse.Namespace):
    from ratsweep.sweep.space import load

    return load(args.space, _overrides(getattr(args, "set", None) or []), smoke=getattr(args, "smoke", False),
                max_trials=getattr(args, "max_trials", None))



def _resume_command(args: argparse.Namespace) -> str:
    """The command the user ran, with --resume: how an interrupted sweep continues (printed, so any
    password in a URI is masked: MLFLOW_TRACKING_PASSWORD is the place for it)."""
    import re
    import shlex

    masked = [re.sub(r"(://[^/:@\s]+):[^@/\s]+@", r"\1:***@", arg) for arg in args.argv]
    return shlex.join(["ratsweep", *masked] + ([] if args.resume else ["--resume"]))


def run(args: argparse.Namespace) -> int:
    """Run the sweeps of a search space (a YAML path or a bundled name) with Ray Tune, tracked in MLflow."""
    import signal

    spaces = _load(args)  # every document valid before anything starts
    from ratsweep.sweep import checks, ray_internals, runner, tracking
    from ratsweep.sweep import submit as submission
    from ratsweep.sweep.space import check_writable_folder

    runner.Signals.install()
    # a job sent by `ratsweep submit` is continued by the same submit command, with --resume
    resume = os.environ.get(submission.RESUME_HINT_VAR) or _resume_command(args)
    in_job = ray_internals.in_ray_job()  # `ray job submit -- ratsweep run ...`, or ratsweep submit's job: its folder is a temporary copy
    if in_job:  # the job's folder is temporary: results must go somewhere lasting
        submission.lasting_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        submission.lasting_path(args.storage)
    options = runner.RunOptions(
        smoke=args.smoke, data_dir=args.data_dir, tracking_uri=args.tracking_uri, storage=args.storage,
        address=args.address, resume=args.resume, max_concurrent=args.max_concurrent,
        flush_denormal=not args.keep_denormals,
    )
    failed = False
    try:
        if args.address is None and not in_job:  # on a cluster the data lives on the workers: each trial checks there
            for space in spaces:
                checks.check_data(space, args.data_dir)
        if not args.resume:  # a resumed sweep goes on in the store it began in
            tracking.check_store(tracking.tracking_uri(args.tracking_uri))
        check_writable_folder(args.storage, "--storage")
        if args.resume:
            checks.check_resumable(spaces, args.storage, args.smoke)
        runner.init_ray(args.address)
        runner.Signals.install()  # again: ray.init puts its own SIGTERM handler (a crash dump) in place
        for space in spaces:
            checks.check_cluster(space, args.smoke)
        for space in spaces:
            outcome = runner.run_sweep(space, options)
            runner.print_summary(outcome)
            if outcome.interrupted:  # the whole invocation stops: later sweeps of the file too
                print(f"interrupted; continue with: {resume}", file=sys.stderr)
                return 128 + outcome.interrupted
            counts = outcome.counts()
            failed |= counts["failed"] + counts["diverged"] > 0
    except KeyboardInterrupt:
        print(f"interrupted; continue with: {resume}", file=sys.stderr)
        return 128 + (runner.Signals.received or signal.SIGINT)
    try:  # here, not at exit: a signal while Ray shuts down is an interrupt too
        runner.shutdown_ray()
    except KeyboardInterrupt:
        print("interrupted while Ray shut down; every sweep had ended", file=sys.stderr)
        return 128 + (runner.Signals.received or signal.SIGINT)
    return EXIT_TRIALS_FAILED if failed else EXIT_OK


def server(args: argparse.Namespace) -> int:
    """Start a team's MLflow tracking server on a PostgreSQL store (checked first), bound to 127.0.0.1 unless told otherwise."""
    from ratsweep.errors import UserError
    from ratsweep.sweep import server as tracking_server

    if not args.backend_store_uri:
        raise UserError("--backend-store-uri: expected postgresql://USER@HOST:PORT/DB, here or in MLFLOW_BACKEND_STORE_URI")
    tracking_server.serve(args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.workers,
                          args.allowed_hosts, args.db_pool, args.auth, args.admin_password_file, args.default_permission)
    return 0


def sync(args: argparse.Namespace) -> int:
    """Send the MLflow writes a sweep held while its tracking store was down: exit 0 when all went, 1 if some wait still."""
    from pathlib import Path

    from ratsweep.errors import UserError
    from ratsweep.sweep import runner
    from ratsweep.sweep.resume import SWEEP_FILE

    target = Path(args.target)
    if not target.exists():  # a sweep name: its newest folder under --storage
        target = next(iter(sorted(Path(args.storage).glob(f"{args.target}-*/{runner.OUTBOX_FILE}"), reverse=True)), None)
        if target is None:
            raise UserError(f"{args.target}: no such file or folder, and no sweep of that name under {args.storage} holds MLflow writes")
    elif not ((target / SWEEP_FILE).is_file() if target.is_dir() else target.name == runner.OUTBOX_FILE):
        raise UserError(f"{args.target}: expected a sweep's Tune folder (holding {SWEEP_FILE}), its "
                        f"{runner.OUTBOX_FILE}, or a sweep name")
    message = runner.sync(target, wait_s=args.wait)
    print(f"ratsweep sync: {message or 'nothing held in ' + str(target)}")
    return EXIT_INCOMPLETE if message.startswith("could not") else EXIT_OK


def validate(args: argparse.Namespace) -> int:
    """Check a search space without running it: exit 0 if valid, 2 (with the reason) if not."""
    import yaml

    spaces = _load(args)
    for i, space in enumerate(spaces):
        if args.show:  # the space as it runs: its `extends:` base merged in (--set and --smoke apply on top)
            print(("---\n" if i else "") + yaml.safe_dump(space.document, sort_keys=False, default_flow_style=None), end="")
        else:
            print(f"{space.path}: {space.name}: ok ({space.experiment}, {_trial_count(space)})")
    return 0


def _trial_count(space) -> str:
    from ratsweep.sweep.space import MAX_TRIALS

    if space.search_alg["type"] not in ("random", "grid"):
        return f"{space.num_samples} {space.search_alg['type']} samples"
    if space.trial_bound() > MAX_TRIALS:  # allowed by --max-trials: counted, not expanded
        return f"up to {space.trial_bound():,} trials"
    return f"{len(space.trials())} distinct trials"


def list_plugins(args: argparse.Namespace) -> int:
    """Experiments, architectures and bundled search spaces (with the package that registered each)."""
    from ratsweep import registry
    from ratsweep.sweep.space import bundled

    print("experiments:")
    for name, exp in registry.experiments().items():
        print(f"  {name:<20} {exp.description}  [{exp.source}]")
    print("architectures:")
    for name, arch in registry.architectures().items():
        print(f"  {name:<20} ({arch.family}) {arch.description}  [{arch.source}]")
    print("datasets (ratsweep data NAME --dir DIR):")
    _print_datasets()
    print("search spaces:")
    spaces = bundled()
    width = max(map(len, spaces), default=20)
    for name, path in spaces.items():
        print(f"  {name:<{width}} {path}")
    for error in registry.load_errors:
        print(f"plugin failed to load: {error}")
    return 0


def describe(args: argparse.Namespace) -> int:
    """An experiment's config keys (types, defaults, conditions), metrics, datasets and architectures."""
    from ratsweep import config, registry
    from ratsweep.errors import UserError

    try:
        exp = registry.get_experiment(args.name)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    print(f"{exp.name}: {exp.description}  [{exp.source}]")
    print("metrics:  " + ", ".join(f"{m} ({exp.modes[m]})" if m in exp.modes else m for m in exp.metrics))
    if exp.datasets:
        print("datasets: " + ", ".join(exp.datasets) + "  (ratsweep data NAME --dir DIR)")
    if exp.family:
        library = "swap.from" in config.keys(exp.config)  # the image experiments build timm/torchvision models by name
        print(f"models:   {', '.join(registry.architectures(exp.family))}  (architectures of family {exp.family!r})"
              + ("; or timm:NAME, torchvision:NAME (any model those build)" if library else ""))
    if exp.smoke:
        print("--smoke:  " + ", ".join(f"{k}={v}" for k, v in exp.smoke.items()))
    rows = [("key", "expects", "default", "applies when", "meaning")]
    rows += [(d.key, d.expected, _yaml_text(d.default), d.when or "always", d.doc) for d in config.key_docs(exp.config)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print("config keys:")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0


def _yaml_text(value) -> str:
    """A default as a search space writes it ([5, 4], null, true, "")."""
    import yaml

    return yaml.safe_dump([list(value) if isinstance(value, tuple) else value], default_flow_style=True).strip()[1:-1]


def _print_datasets() -> None:
    from ratsweep import registry

    for name, dataset in registry.datasets().items():
        print(f"  {name:<20} {dataset.description}  [{dataset.source}]")


def data(args: argparse.Namespace) -> int:
    """Download a dataset an experiment reads (where there is internet); without a name, list them."""

    from ratsweep import registry

    if args.name is None:
        _print_datasets()
        return 0
    from ratsweep.errors import UserError
    from ratsweep.sweep.space import check_writable_folder

    try:
        dataset = registry.get_dataset(args.name)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    directory = check_writable_folder(args.dir, "--dir")
    try:
        dataset.download(directory)
    except (OSError, RuntimeError) as e:  # no network, a failed checksum, a full disk
        raise UserError(f"{args.name}: download into {directory} failed: {e}") from None
    dataset.verify(directory)
    if dataset.location is None:
        print(f"{args.name}: ready in {directory} (pass --data-dir {directory} to ratsweep run)")
    else:
        print(f"{args.name}: ready in {dataset.location(directory)}")
    return 0


def best(args: argparse.Namespace) -> int:
    """The best trial configs of a sweep, read from MLflow (json: run_id, metric, value, config)."""
    import json

    from ratsweep.sweep import results, tracking

    sweep = results.load_sweep(tracking.tracking_uri(args.tracking_uri), args.name, args.include_smoke, args.all_runs)
    entries = results.best(sweep, args.top)
    if args.format == "json":
        print(json.dumps(entries, indent=2))
    elif args.format == "yaml":
        print(results.best_as_space(sweep, entries), end="")
    else:
        for rank, entry in enumerate(entries, 1):
            config = " ".join(f"{k}={v}" for k, v in entry["config"].items())
            print(f"{rank:>3}. {entry['metric']}={entry['value']:.6g}  {entry['name']}  run {entry['run_id']}  {config}")
    return 0


def report(args: argparse.Namespace) -> int:
    """A paper-style table of a sweep from MLflow: mean ± std over seeds per cell with finished, diverged,
    failed and missing seeds counted, best and second best marked; the paper's numbers beside it; plots."""

    from ratsweep import report as reports
    from ratsweep.errors import UserError
    from ratsweep.sweep import results, tracking
    from ratsweep.sweep.space import check_writable_folder

    plots = args.plots and check_writable_folder(args.plots, "--plots")  # before the store is read
    sweep = results.load_sweep(tracking.tracking_uri(args.tracking_uri), args.name, args.include_smoke, args.all_runs)
    layout = reports.Layout.of(sweep)  # the search space's `report:` layout, if it has one
    if args.group_by or args.columns or args.best_of:  # a layout given here replaces it
        layout = reports.Layout(args.group_by or reports.default_group_by(sweep), args.columns, args.best_of,
                                labels=layout.labels, paper=layout.paper)
        layout.rows = [k for k in layout.rows if k not in (args.columns, args.best_of)]
    layout.percent |= args.percent
    reports.check_layout(sweep, layout)
    if args.paper is not None:
        if args.format == "latex":
            raise UserError("--paper: expected --format md or csv")
        text = reports.paper_comparison(sweep, layout, args.format, args.paper or None, args.failed_as)
    else:
        text = reports.table(sweep, layout, args.format, args.failed_as)
    print(text, end="")
    if plots:  # the table as printed, with its plots beside it
        suffix = {"md": "md", "csv": "csv", "latex": "tex"}[args.format]
        written = plots / f"report{'_paper' if args.paper is not None else ''}.{suffix}"
        written.write_text(text)
        files = [written, *reports.plots(sweep, layout, plots)]
        reports.log_report(sweep, files, plots)
        print(f"plots: {len(files)} files in {plots}, beside the table ({written.name}); also attached to the sweep's MLflow run "
              f"under report/")
    return 0


def submit(args: argparse.Namespace) -> int:
    """Submit `ratsweep run SPACE` to a Ray cluster as a job, with this machine's ratsweep code."""

    from ratsweep.sweep import submit as submission

    _load(args)  # validate here, before anything travels
    # The job runs in a temporary copy of the working dir: results must go somewhere lasting.
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    storage = args.storage or "~/ratsweep_results"
    run_args = [*(f"--set={pair}" for pair in args.set or []), *(["--smoke"] if args.smoke else [])]
    shown_uri, credentials = submission.job_credentials(submission.lasting_uri(uri))  # credentials travel in the runtime env
    run_args += [f"--tracking-uri={shown_uri}", f"--storage={submission.lasting_path(storage)}"]
    if args.data_dir:
        run_args.append(f"--data-dir={args.data_dir}")
    if args.max_concurrent:
        run_args.append(f"--max-concurrent={args.max_concurrent}")
    if args.max_trials:
        run_args.append(f"--max-trials={args.max_trials}")
    if args.keep_denormals:
        run_args.append("--keep-denormals")
    if args.resume:
        run_args.append("--resume")
    job_id = submission.submit(args.address, args.space, run_args, args.working_dir, _resume_command(args), credentials)
    print(f"submitted job {job_id} to {args.address}")
    print(f"follow it:  ray job logs --follow --address {args.address} {job_id}")
    print(f"status:     ray job status --address {args.address} {job_id}")
    return 0


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the error into one line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line (the command and what was wrong) and exit code 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> OneLineParser:
    """Every command and its options (also what the docs' CLI reference is generated from)."""
    import ratsweep
    from ratsweep.sweep.space import MAX_TRIALS  # light: no Ray or MLflow

    parser = OneLineParser(prog="ratsweep", description="Sweeps of trainable rational vs fixed activations.")
    parser.add_argument("--version", action="version", version=f"ratsweep {ratsweep.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(fn, name=None):
        sub = commands.add_parser(name or fn.__name__, help=fn.__doc__.split(".")[0], description=fn.__doc__)
        sub.set_defaults(run=fn)
        return sub

    sub = command(check)
    sub.add_argument("--device", choices=["cpu", "cuda"], action="append", help="check only these (default: every device here)")
    for fn in (run, submit):
        sub = command(fn)
        sub.add_argument("space", help="a search-space YAML file or the name of a bundled one (ratsweep list)")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a config key for every trial (repeatable)")
        sub.add_argument("--smoke", action="store_true", help="shrink every trial to seconds (tests, dry runs)")
        sub.add_argument("--data-dir", default=None if fn is submit else "data", help="where datasets live (default: ./data)")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
        sub.add_argument("--storage", default=None if fn is submit else "ratsweep_results", help="Ray Tune results and checkpoints (shared storage on a cluster)")
        sub.add_argument("--resume", action="store_true", help="continue the latest interrupted sweep of this space")
        sub.add_argument("--max-concurrent", type=_positive, help="at most this many trials at once")
        sub.add_argument("--max-trials", type=_positive, help=f"allow more than {MAX_TRIALS:,} trials")
        sub.add_argument("--keep-denormals", action="store_true", help="let CPU trials compute with subnormal floats "
                         "(default: flushed to zero, which is often many times faster)")
        if fn is run:
            sub.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
        else:
            sub.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
            sub.add_argument("--working-dir", default=".", help="shipped to the cluster as the job's working dir (default: .)")
    for fn in (best, report):
        sub = command(fn)
        sub.add_argument("name", help="the sweep's name (its MLflow experiment)")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
        sub.add_argument("--include-smoke", action="store_true", help="also count the sweep's --smoke runs (left out by default)")
        sub.add_argument("--all-runs", action="store_true", help="count every run of a config that ran more than once "
                         "(default: its latest finished run)")
        if fn is best:
            sub.add_argument("--top", type=_positive, default=1, help="how many configs (default: 1)")
            sub.add_argument("--format", choices=["table", "json", "yaml"], default="table")
        else:
            sub.add_argument("--group-by", nargs="+", metavar="KEY", help="a row per value of these config keys "
                             "(default: the search space's report.rows, else the keys that vary, except seed)")
            sub.add_argument("--columns", metavar="KEY", help="a column per value of this config key (e.g. norm)")
            sub.add_argument("--best-of", metavar="KEY", help="each cell the better of this key's settings (e.g. lsuv)")
            sub.add_argument("--percent", action="store_true", help="show 100 x the metric (accuracies)")
            sub.add_argument("--failed-as", type=float, metavar="VALUE", help="average a diverged seed at its last value "
                             "(the best before divergence) and a failed or missing one as VALUE (the metric's units; nan: "
                             "dropped); default: counted, not averaged. The authors' rule differs per table: Tables 1-2 "
                             "(CIFAR-10) --failed-as 0.1 (a missing seed as 10%% accuracy); Tables 3-4 (offline RL) the "
                             "default (runs skip non-finite evaluations, a seed with none is dropped); Table 5 (Tiny "
                             "ImageNet) --failed-as nan (a run's best epoch before NaN counts, no run no number)")
            sub.add_argument("--paper", nargs="?", const="", metavar="TABLE", help="each cell beside the paper's number "
                             "and the difference in standard errors (TABLE: the space's report.paper, or table1..table5)")
            sub.add_argument("--format", choices=["md", "latex", "csv"], default="md")
            sub.add_argument("--plots", metavar="DIR", help="also write here the table (report.md, .csv or .tex), its cells "
                             "as bars beside the paper's numbers, learning curves and learned-activation plots")
    sub = command(validate)
    sub.add_argument("space")
    sub.add_argument("--show", action="store_true", help="print the space as it runs, its extends: base merged in")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE")
    sub.add_argument("--max-trials", type=_positive, help=f"allow more than {MAX_TRIALS:,} trials")
    sub = command(data)
    sub.add_argument("name", nargs="?", help="the dataset (ratsweep data, without it, lists them)")
    sub.add_argument("--dir", default="data", help="where to put it; ratsweep run's --data-dir (default: ./data)")
    sub = command(server)
    sub.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"),
                     help="postgresql://USER@HOST:PORT/DB (the runs; default: MLFLOW_BACKEND_STORE_URI); the password from "
                     "PGPASSWORD or ~/.pgpass (mode 600), never on the command line")
    sub.add_argument("--artifacts-destination", required=True, help="where artifacts go (a shared folder, s3://...); "
                     "clients upload through the server")
    sub.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1; 0.0.0.0 for a team)")
    sub.add_argument("--port", type=_positive, default=5000)
    sub.add_argument("--workers", type=_positive, default=2, help="server processes (default: 2; about one per "
                     "2 CPUs of the server's machine)")
    sub.add_argument("--db-pool", type=_positive, default=5, help="database connections each worker keeps (default: 5), "
                     "and as many more at peaks, for the runs and again for the model registry; workers x 4 x db-pool must fit "
                     "the database's max_connections")
    sub.add_argument("--allowed-hosts", help="host names clients use to reach it (MLflow 3 refuses others)")
    sub.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                     help="users sign in (MLflow's basic-auth app; clients set MLFLOW_TRACKING_USERNAME/PASSWORD); "
                     "default: on whenever --host is not 127.0.0.1; --no-auth serves anyone who reaches the port")
    sub.add_argument("--admin-password-file", metavar="FILE", help="the admin user's password (mode 600; default: "
                     "MLFLOW_AUTH_ADMIN_PASSWORD); set once, when the server first starts on a database")
    sub.add_argument("--default-permission", choices=("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"), default="READ",
                     help="what users may do in experiments others created (default: READ; EDIT lets a team log to each "
                     "other's sweeps)")
    sub = command(sync)
    sub.add_argument("target", help="a sweep's Tune folder (printed by ratsweep run), its mlflow_outbox.json, or a sweep name")
    sub.add_argument("--storage", default="ratsweep_results", help="where to look for a sweep name (default: ./ratsweep_results)")
    sub.add_argument("--wait", type=float, default=30.0, help="keep retrying an unreachable store this many seconds (default: 30)")
    command(list_plugins, "list")
    sub = command(describe)
    sub.add_argument("name", help="a registered experiment (ratsweep list)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for hints that repeat the command
    sys.exit(_guarded(args))


def _guarded(args: argparse.Namespace) -> int:
    """User errors are one line and exit code 2, never a stack trace."""
    from ratsweep.errors import EXIT_BAD_INPUT, UserError

    try:
        return args.run(args)
    except UserError as e:  # ConfigError, SpaceError, DataError, NotFound too
        for line in str(e).splitlines():  # a search space's every mistake, one line each
            print(f"ratsweep {args.command}: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
