"""`ratsweep submit`: `ray job submit` of a `ratsweep run`, with this machine's code.

The job's runtime env carries the current directory (the user's plugins, data lists) as its working
dir and this ratsweep package, kernels and bundled spaces inside it, as a py_module, so the cluster
runs exactly the code that was validated here; the submitted search-space file travels inside it,
wherever it was on this machine. Whatever the working dir holds (a source checkout's own
`ratsweep/`, or an unrelated folder of that name) the job imports the staged package (ENTRYPOINT).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
import tempfile
import urllib.parse
from pathlib import Path

import yaml

from ..rational._native import kernels_dir
from ..errors import UserError
from .space import bundled_dir, documents_of, extended, resolve
from .outbox import with_userinfo
from .tracking import CREDENTIALS, sqlite_file

EXCLUDES = [".git", ".venv", "venv", "mlruns*", "ratsweep_results", "data", "__pycache__", "*.pyc"]


def stage_package(into: Path) -> Path:
    """A copy of the ratsweep package laid out like the wheel (kernels/ and search_spaces/ inside)."""
    target = into / "ratsweep"
    shutil.copytree(Path(__file__).resolve().parent.parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for source in (kernels_dir(), bundled_dir()):  # top-level folders in a source checkout
        if not (target / source.name).exists():
            shutil.copytree(source, target / source.name)
    return target


def lasting_uri(uri: str | None) -> str:
    """The tracking URI for a job: a server, or a SQLite file at an absolute path on the head."""
    if not uri:
        raise UserError("--tracking-uri: expected the MLflow store the job logs to (http://HOST:5000, or "
                        "sqlite:////absolute/path/mlruns.db on the head node); the job's own folder is temporary")
    db = sqlite_file(uri)
    if db is not None and not db.is_absolute():
        raise UserError(f"--tracking-uri: expected an absolute SQLite path (sqlite:////path/mlruns.db) for a job, got {uri!r}")
    return uri


def job_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(the tracking URI as the job's command line may show it, the environment variables that carry
    who the job logs as): MLflow's credential variables of this shell, and a user and password
    written into the URI moved out of it (a job's command line is listed to everyone with the token)."""
    parts = urllib.parse.urlsplit(uri)
    carried = {name: os.environ[name] for name in (*CREDENTIALS, "MLFLOW_TRACKING_TOKEN") if os.environ.get(name)}
    if parts.username is None:
        return uri, carried
    carried |= {CREDENTIALS[0]: urllib.parse.unquote(parts.username)}
    if parts.password is not None:
        carried[CREDENTIALS[1]] = urllib.parse.unquote(parts.password)
    return with_userinfo(parts), carried


TOKEN_FILES = ("~/.ratsweep/ray_auth_token", "~/.ray/auth_token")  # the README's, and Ray's own default


def warn_open_token_files() -> None:
    """A warning for each Ray token file that users other than its owner can read."""
    for name in (os.environ.get("RAY_AUTH_TOKEN_PATH"), *TOKEN_FILES):
        path = Path(name).expanduser() if name else None
        if path is not None and path.is_file() and path.stat().st_mode & 0o077:
            print(f"ratsweep submit: warning: the Ray token file {path} is readable by other users (mode "
                  f"{stat.filemode(path.stat().st_mode)}): chmod 600 {path}", file=sys.stderr, flush=True)


def lasting_path(storage: str) -> str:
    """Tune's storage for a job: absolute, under ~ (of the head), or a URI such as s3://."""
    if not (storage.startswith(("/", "~")) or "://" in storage):
        raise UserError(f"--storage: expected an absolute path, ~/..., or a URI (s3://...) for a job, got {storage!r}")
    return storage


SUBMITTED = "submitted_"  # a user's search-space file travels in the staged package as search_spaces/submitted_<stem>.yaml


def stage_space(space: str, package: Path) -> str:
    """What the job runs: a bundled space by name, or the user's file (from anywhere) copied into
    the staged package's search spaces, run by its name there (with its `extends:` bases merged in)."""
    path = resolve(space)
    if path != Path(space):  # a bundled name
        return space
    name = f"{SUBMITTED}{path.stem}"
    target = package / "search_spaces" / f"{name}.yaml"
    documents = documents_of(path)
    if any(isinstance(d, dict) and "extends" in d for d in documents):  # its base may be a file the cluster lacks
        target.write_text(yaml.safe_dump_all([extended(path, d) for d in documents], sort_keys=False))
    else:
        shutil.copyfile(path, target)
    return name


# `python -m` and `python -c` put the job's working dir first on sys.path (as ''), ahead of the
# py_modules (which Ray puts ahead of the working dir on PYTHONPATH): dropping that entry makes the
# staged package the one imported. (`python -P` does the same from Python 3.11 only; under
# PYTHONSAFEPATH there is no such entry to drop.)
ENTRYPOINT = ["python", "-c", "import sys; sys.path.remove('') if '' in sys.path else None; from ratsweep.cli import main; main()"]
# What ratsweep run prints as the way to continue an interrupted sweep: this command, not the job's.
RESUME_HINT_VAR = "RATSWEEP_RESUME_COMMAND"
# `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default: 3): time for the
# sweep to stop its trials, save Tune's state, and send its held MLflow writes (runner.FINAL_WAIT_S
# of retries for a slow store) and close its runs.
STOP_WAIT_S = 120


def submit(address: str, space: str, run_args: list[str], working_dir: str = ".", resume_command: str = "",
           secrets: dict[str, str] | None = None) -> str:
    """The job's id. `secrets`: environment variables the job gets through its runtime env (never
    its command line)."""
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    warn_open_token_files()
    with tempfile.TemporaryDirectory(prefix="ratsweep-submit-") as tmp:
        package = stage_package(Path(tmp))
        command = shlex.join([*ENTRYPOINT, "run", stage_space(space, package), *run_args])
        env_vars = {"RAY_JOB_STOP_WAIT_TIME_S": os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", str(STOP_WAIT_S)), **(secrets or {})}
        if resume_command:
            env_vars[RESUME_HINT_VAR] = resume_command
        try:
            job_client = JobSubmissionClient(address)
        except ConnectionError as e:
            raise UserError(f"--address: cannot reach a Ray dashboard at {address} ({str(e).splitlines()[0]})") from None
        return job_client.submit_job(
            entrypoint=command,
            runtime_env={"working_dir": str(Path(working_dir)), "py_modules": [str(package)], "excludes": EXCLUDES,
                         "env_vars": env_vars},
        )
