"""`ratsweep server`: a team's MLflow tracking server, on a PostgreSQL backend store.

A thin, checked front to `mlflow server`: the database is reached once before anything starts (a
wrong password or a missing driver is one line, not a server that fails at its first request), the
server binds 127.0.0.1 unless told otherwise, and the URI the team passes to `ratsweep run` is
printed without credentials.

No secret goes on a command line, where any user of the machine reads it (`ps`,
/proc/PID/cmdline): the store's URI reaches `mlflow server` through MLFLOW_BACKEND_STORE_URI
without its password, which libpq takes from PGPASSWORD (moved there from a URI that held it) or
a 0600 ~/.pgpass. Bound beyond loopback the server authenticates (MLflow's basic-auth app: users,
passwords, per-experiment permissions) unless told --no-auth; its admin password comes from
MLFLOW_AUTH_ADMIN_PASSWORD or a 0600 file, never a default.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import tempfile
import urllib.parse
from pathlib import Path

from .outbox import reason, redacted, with_userinfo
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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def command(artifacts: str, host: str, port: int, workers: int, allowed_hosts: str | None, auth: bool) -> list[str]:
    """The `mlflow server` command line, which holds no secret: the store comes from MLFLOW_BACKEND_STORE_URI,
    the artifacts are proxied into `artifacts`; with `auth`, MLflow's basic-auth app."""
    out = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    return out + (["--allowed-hosts", allowed_hosts] if allowed_hosts else []) + (["--app-name", "basic-auth"] if auth else [])


def without_password(uri: str) -> tuple[str, str | None]:
    """(the URI without its password, the password or None)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri, None
    return with_userinfo(parts, parts.username), urllib.parse.unquote(parts.password)


def private_text(path: str, option: str) -> str:
    """A secret from a file only its owner can read (its first line), or a one-line UserError."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip().splitlines()
    except OSError as e:
        raise UserError(f"{option}: cannot read {path} ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{option}: {path} is open to other users (mode {stat.filemode(mode)}); chmod 600 {path}")
    if not text or not text[0]:
        raise UserError(f"{option}: {path} is empty; expected the password on its first line")
    return text[0]


def auth_environment(store: str, default_permission: str, admin_password_file: str | None) -> dict[str, str]:
    """What `mlflow server --app-name basic-auth` needs, as environment variables: its config file
    (users and permissions kept in the same PostgreSQL database, beside the runs), the admin's
    password, a secret key for its forms."""
    try:
        import flask_wtf  # noqa: F401, PLC0415  (MLflow's auth app needs it)
    except ImportError:
        raise UserError("--auth: MLflow's basic-auth app needs Flask-WTF: pip install 'ratsweep[server]'") from None
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or (
        private_text(admin_password_file, "--admin-password-file") if admin_password_file else None)
    if not password:
        raise UserError("--admin-password-file: the server authenticates (it binds beyond 127.0.0.1, or --auth): expected "
                        "the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD or a file only you can read (--admin-password-file "
                        "FILE, mode 600); --no-auth serves without authentication")
    folder = Path(tempfile.mkdtemp(prefix="ratsweep-server-"))  # 0700; the file holds no secret, but names the store
    config = folder / "basic_auth.ini"
    config.write_text("[mlflow]\n"
                      f"default_permission = {default_permission}\n"
                      f"database_uri = {store.replace('%', '%%')}\n"  # configparser reads % as interpolation
                      "admin_username = admin\n"  # MLFLOW_AUTH_ADMIN_USERNAME, where set, wins (MLflow reads it)
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    config.chmod(0o600)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            # the same for every worker of this server; a new one per start (forms open in a browser expire)
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}


def serve(backend: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 2,
          allowed_hosts: str | None = None, db_pool: int = 5, auth: bool | None = None,
          admin_password_file: str | None = None, default_permission: str = "READ") -> None:
    """Check the store, print how to use the server, then become `mlflow server` (exec) with each
    worker's database pool holding `db_pool` connections (and as many more at peaks). `auth` None:
    authenticate when bound beyond loopback."""
    store, password = without_password(backend)
    if password is not None:
        print("ratsweep server: the password in --backend-store-uri was on this command's line, where other users of this "
              "machine can read it; the server gets it through PGPASSWORD instead. Next time leave it out and set "
              "PGPASSWORD or a ~/.pgpass file (mode 600)", file=sys.stderr, flush=True)
        os.environ["PGPASSWORD"] = password  # libpq's own variable: psycopg2, here and in the server, reads it
    check_backend(store, workers * 4 * db_pool)  # per worker: two stores (runs, model registry), each pool + overflow
    # psycopg2 is what `ratsweep[server]` installs; MLflow's default PostgreSQL driver is another
    driver_uri = "postgresql+psycopg2://" + store.split("://", 1)[1]
    auth = host not in LOOPBACK if auth is None else auth
    environment = auth_environment(driver_uri, default_permission, admin_password_file) if auth else {}
    shown = "127.0.0.1" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"ratsweep server: MLflow on http://{shown}:{port} (runs in {redacted(store)}, artifacts in {artifacts}"
          + (f"; users sign in, new users' default permission {default_permission}" if auth else "; no authentication")
          + f"); sweeps log to it with: ratsweep run SPACE --tracking-uri http://{shown}:{port}"
          + (" (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD set)" if auth else ""), flush=True)
    if host not in LOOPBACK and not allowed_hosts:
        print("ratsweep server: bound beyond localhost: MLflow 3 answers only requests for localhost unless given "
              "--allowed-hosts HOST[,HOST]", file=sys.stderr, flush=True)
    if host not in LOOPBACK and not auth:
        print(f"ratsweep server: WARNING: --no-auth on {host}: anyone who reaches port {port} can read, change and delete "
              "every run", file=sys.stderr, flush=True)
    if host not in LOOPBACK:
        print("ratsweep server: passwords and runs cross the network in plain HTTP: put the server behind TLS (docs/team.md)",
              file=sys.stderr, flush=True)
    argv = command(artifacts, host, port, workers, allowed_hosts, auth)
    os.environ.update(environment, MLFLOW_BACKEND_STORE_URI=driver_uri, MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=str(db_pool),
                      MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=str(db_pool))
    os.execv(argv[0], argv)
