"""`ratsweep server`: a team's MLflow tracking server, on a PostgreSQL backend store.

A thin, checked front to `mlflow server`: the database is reached once before anything starts (a
wrong password or a missing driver is one line, not a server that fails at its first request), the
server binds 127.0.0.1 unless told otherwise, and the URI the team passes to `ratsweep run` is
printed without credentials.
"""

from __future__ import annotations

import os
import sys
import urllib.parse

from .outbox import reason, redacted
from ..errors import UserError


def check_backend(uri: str, connections: int = 0) -> None:
    """A PostgreSQL store must be reachable with psycopg2 (pip install 'ratsweep[server]') and allow
    the server's `connections` at once (every worker's database pool full)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if not scheme.startswith("postgresql"):
        raise UserError(f"--backend-store-uri: expected postgresql://USER[:PASSWORD]@HOST:PORT/DB, got {redacted(uri)!r}")
    try:
        import psycopg2  # noqa: PLC0415
    except ImportError:
        raise UserError("--backend-store-uri: PostgreSQL needs psycopg2: pip install 'ratsweep[server]'") from None
    try:
        connection = psycopg2.connect(uri.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=5)
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int")
            allowed = cursor.fetchone()[0]
        connection.close()
    except psycopg2.Error as e:
        raise UserError(f"--backend-store-uri: cannot connect to {redacted(uri)}: {reason(e)}") from None
    if connections > allowed:
        raise UserError(f"--db-pool: expected at most {allowed} connections in all (the database's "
                        f"max_connections less its reserved ones), got {connections} (--workers x 4 x --db-pool: each worker's "
                        "tracking and model-registry stores keep a pool and as many more at peaks); "
                        "lower them or raise max_connections")


def command(backend: str, artifacts: str, host: str, port: int, workers: int, allowed_hosts: str | None) -> list[str]:
    """The `mlflow server` command line: the runs in `backend`, artifacts proxied into `artifacts`."""
    out = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    return out + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def serve(backend: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 2,
          allowed_hosts: str | None = None, db_pool: int = 5) -> None:
    """Check the store, print how to use the server, then become `mlflow server` (exec) with each
    worker's database pool holding `db_pool` connections (and as many more at peaks)."""
    check_backend(backend, workers * 4 * db_pool)  # per worker: two stores (runs, model registry), each pool + overflow
    shown = "127.0.0.1" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"ratsweep server: MLflow on http://{shown}:{port} (runs in {redacted(backend)}, artifacts in {artifacts}); "
          f"sweeps log to it with: ratsweep run SPACE --tracking-uri http://{shown}:{port}", flush=True)
    if host != "127.0.0.1" and not allowed_hosts:
        print("ratsweep server: bound beyond localhost: MLflow 3 answers only requests for localhost unless given "
              "--allowed-hosts HOST[,HOST]", file=sys.stderr, flush=True)
    # psycopg2 is what `ratsweep[server]` installs; MLflow's default PostgreSQL driver is another
    driver_uri = "postgresql+psycopg2://" + backend.split("://", 1)[1]
    argv = command(driver_uri, artifacts, host, port, workers, allowed_hosts)
    os.environ.update(MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=str(db_pool), MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=str(db_pool))
    os.execv(argv[0], argv)
