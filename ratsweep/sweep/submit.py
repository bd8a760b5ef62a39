"""`ratsweep submit`: `ray job submit` of a `ratsweep run`, with this machine's code.

The job's runtime env carries the current directory (the user's search spaces, plugins) as its
working dir and this ratsweep package, kernels and bundled spaces inside it, as a py_module, so the
cluster runs exactly the code that was validated here.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

from ..rational._native import kernels_dir
from .space import SpaceError, UserError, bundled_dir, resolve
from .tracking import sqlite_file

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


def lasting_path(storage: str) -> str:
    """Tune's storage for a job: absolute, under ~ (of the head), or a URI such as s3://."""
    if not (storage.startswith(("/", "~")) or "://" in storage):
        raise UserError(f"--storage: expected an absolute path, ~/..., or a URI (s3://...) for a job, got {storage!r}")
    return storage


def entrypoint(space: str, run_args: list[str], working_dir: Path) -> str:
    """The job's command: paths are made relative to the working dir the job starts in."""
    path = resolve(space)
    if path == Path(space):  # a file of the user's, not a bundled name
        try:
            space = str(path.resolve().relative_to(working_dir.resolve()))
        except ValueError:
            raise SpaceError(f"{space}: the search space must be inside the working dir {working_dir} to be shipped") from None
    return shlex.join(["python", "-m", "ratsweep", "run", space, *run_args])


def submit(address: str, space: str, run_args: list[str], working_dir: str = ".") -> str:
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    directory = Path(working_dir)
    command = entrypoint(space, run_args, directory)
    with tempfile.TemporaryDirectory(prefix="ratsweep-submit-") as tmp:
        package = stage_package(Path(tmp))
        try:
            job_client = JobSubmissionClient(address)
        except ConnectionError as e:
            raise UserError(f"--address: cannot reach a Ray dashboard at {address} ({str(e).splitlines()[0]})") from None
        return job_client.submit_job(
            entrypoint=command,
            runtime_env={"working_dir": str(directory), "py_modules": [str(package)], "excludes": EXCLUDES},
        )
