"""`ratsweep server`: a real PostgreSQL (initdb/pg_ctl in a temporary folder, 127.0.0.1) behind
`mlflow server`, a sweep logged to it, and no secret (the database's password, a password in the
tracking URI) in what the sweep prints or in any param, tag or artifact, nor in any process's
command line. With MLflow's basic-auth app: unauthenticated access refused, a signed-in user's
sweep landing (also one submitted to a two-node Ray cluster, its credentials in the job's runtime
env), a read-only user reading but not logging, each refusal one line naming the variables."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from helpers import ratsweep, trial_runs
from mlflow.exceptions import MlflowException
from services import BIN, MlflowServer, Postgres, RayCluster, descendants

from ratsweep.sweep import server as tracking_server
from ratsweep.sweep import submit as submission
from ratsweep.sweep import tracking

DB_PASSWORD, HTTP_PASSWORD = "pg-s3cret-7", "http-s3cret-9"
SPACE = """\
name: team
experiment: approx
metric: {name: mse, mode: min}
search_space:
  activation: {grid: [relu, rational]}
"""


@pytest.fixture
def postgres():
    """A fresh PostgreSQL with password auth; yields the URI of its database `mlflow`."""
    database = Postgres(DB_PASSWORD).start()
    yield database.uri
    database.stop()


def test_a_wrong_password_is_one_line_without_the_password(tmp_path, postgres):
    store, _ = tracking_server.without_password(postgres)
    proc = ratsweep(tmp_path, "server", "--backend-store-uri", store, "--artifacts-destination", str(tmp_path),
                    env={"PGPASSWORD": "not-the-password"}, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot connect to postgresql://ratsweep@127.0.0.1" in proc.stderr and "password authentication failed" in proc.stderr
    assert "not-the-password" not in proc.stderr


def test_a_sweep_logs_to_mlflow_on_postgres_and_no_secret_lands_anywhere(tmp_path, postgres):
    server = MlflowServer(tmp_path / "mlflow", postgres=postgres).start()
    try:
        (tmp_path / "space.yaml").write_text(SPACE)
        uri = f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{server.port}"  # credentials in the URI, as for MLflow's basic-auth app
        run = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--tracking-uri", uri, timeout=600)
        assert HTTP_PASSWORD not in run.stdout + run.stderr and "alice:***@127.0.0.1" in run.stdout, run.stdout[-2000:]
        best = ratsweep(tmp_path, "best", "team", "--include-smoke", "--tracking-uri", server.uri)
        assert "activation" in best.stdout
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert len(runs) == 3  # the sweep and its two trials
        downloaded = Path(client.download_artifacts(runs[0].info.run_id, "", str(tmp_path / "download")))
        texts = [str(r.data.params) + str(r.data.tags) for r in runs]
        texts += [p.read_bytes().decode("latin1") for p in downloaded.rglob("*") if p.is_file()]
        for secret in (DB_PASSWORD, HTTP_PASSWORD):
            assert not any(secret in text for text in texts), secret
        with psycopg2.connect(postgres) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone()[0] == 3  # the runs live in PostgreSQL
    finally:
        server.stop()
    log = (server.folder / "server.log").read_text()
    [serving] = [line for line in log.splitlines() if line.startswith("ratsweep server: MLflow on")]
    assert DB_PASSWORD not in log and "--tracking-uri http://127.0.0.1:" in serving and "no authentication" in serving, serving


def test_the_database_pool_is_sized_per_worker_and_checked_against_max_connections(tmp_path, postgres):
    store, _ = tracking_server.without_password(postgres)
    too_many = ratsweep(tmp_path, "server", "--backend-store-uri", store, "--artifacts-destination", str(tmp_path),
                        "--workers", "10", "--db-pool", "5", env={"PGPASSWORD": DB_PASSWORD}, check=False)  # 200; the database allows 197
    assert too_many.returncode == 2 and len(too_many.stderr.strip().splitlines()) == 1, too_many.stderr
    assert "--db-pool: expected at most 197 connections in all" in too_many.stderr and "got 200" in too_many.stderr

    server = MlflowServer(tmp_path / "mlflow", postgres=postgres, workers=2)
    server.command = lambda: [*MlflowServer.command(server), "--db-pool", "3"]
    server.start()
    try:
        environ = dict(line.split("=", 1) for line in Path(f"/proc/{server.proc.pid}/environ").read_text().split("\0") if "=" in line)
        assert environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "3" and environ["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] == "3"
    finally:
        server.stop()


def command_lines(*roots: int) -> dict[int, str]:
    """The command lines, as `ps` shows them to any user, of the processes `roots` and all below them
    (what the test started: other test runs on this machine may hold the same test password)."""
    out = {}
    for pid in {pid for root in roots for pid in (root, *descendants(root))}:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue  # ended meanwhile
    return out


def test_no_password_reaches_a_command_line_even_one_written_into_the_uri(tmp_path, postgres):
    server = MlflowServer(tmp_path / "mlflow", postgres=postgres, workers=2).start()  # the URI holds the password
    try:
        lines = command_lines(server.proc.pid)
        assert len(lines) >= 3  # mlflow server, its uvicorn, its job runners
        leaks = {pid: line for pid, line in lines.items() if DB_PASSWORD in line}
        assert not leaks, leaks
        assert all("--backend-store-uri" not in line for line in lines.values())
        environ = Path(f"/proc/{server.proc.pid}/environ")
        assert stat.S_IMODE(environ.stat().st_mode) == 0o400  # the environment: its owner's alone
        variables = dict(v.split("=", 1) for v in environ.read_text().split("\0") if "=" in v)
        assert variables["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://ratsweep@127.0.0.1")
        assert variables["PGPASSWORD"] == DB_PASSWORD  # libpq's variable
        assert MlflowClient(server.uri).search_experiments()  # and the server works
    finally:
        server.stop()
    log = (server.folder / "server.log").read_text()
    assert "the password in --backend-store-uri was on this command's line" in log and DB_PASSWORD not in log


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_binding_beyond_localhost_requires_an_admin_password_from_a_private_file(tmp_path, postgres):
    base = ["server", "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path), "--host", "0.0.0.0",
            "--port", "1"]  # refused before binding anything
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": ""}
    missing = ratsweep(tmp_path, *base, env=env, check=False)
    assert missing.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in missing.stderr.splitlines()[-1]
    assert "--no-auth serves without authentication" in missing.stderr
    open_file = private_file(tmp_path / "admin", "an-admin-pass-1", 0o644)
    refused = ratsweep(tmp_path, *base, "--admin-password-file", str(open_file), env=env, check=False)
    assert refused.returncode == 2 and f"is open to other users (mode -rw-r--r--); chmod 600 {open_file}" in refused.stderr
    assert "an-admin-pass-1" not in refused.stdout + refused.stderr


def test_credentials_to_a_plain_http_server_elsewhere_get_one_warning(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    tracking.warn_if_credentials_travel_plain("http://127.0.0.1:5000")  # this machine: nothing crosses a network
    tracking.warn_if_credentials_travel_plain("https://mlflow.lab.example")
    tracking.warn_if_credentials_travel_plain("http://mlflow.lab.example:5000")
    tracking.warn_if_credentials_travel_plain("http://mlflow.lab.example:5000")
    err = capsys.readouterr().err
    assert err.count("warning: credentials go to http://mlflow.lab.example unencrypted") == 1 and err.count("\n") == 1


def test_submit_moves_uri_credentials_into_the_jobs_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")
    shown, carried = submission.job_credentials("http://alice:p%40ss@mlflow.lab.example:5000")
    assert shown == "http://mlflow.lab.example:5000"
    assert carried == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}
    assert submission.job_credentials("http://mlflow:5000") == ("http://mlflow:5000", {"MLFLOW_TRACKING_PASSWORD": "from-env"})


def test_submit_warns_when_the_ray_token_file_is_readable_by_others(tmp_path, monkeypatch, capsys):
    token = private_file(tmp_path / "token", "abc", 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setenv("HOME", str(tmp_path))  # no other token files
    submission.warn_open_token_files()
    assert f"the Ray token file {token} is readable by other users (mode -rw-r--r--): chmod 600 {token}" in capsys.readouterr().err
    token.chmod(0o600)
    submission.warn_open_token_files()
    assert capsys.readouterr().err == ""


ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD = "adm1n-s3cret-4", "al1ce-s3cret-5", "b0b-s3cret-6"
SECRETS = (DB_PASSWORD, ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD)


def as_user(name: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}


def test_with_authentication_only_signed_in_users_log_and_a_reader_only_reads(tmp_path, postgres, monkeypatch):
    store, _ = tracking_server.without_password(postgres)
    admin_file = private_file(tmp_path / "admin_password", ADMIN_PASSWORD)
    server = MlflowServer(tmp_path / "mlflow", postgres=store, workers=2, env={"PGPASSWORD": DB_PASSWORD},
                          args=("--auth", "--admin-password-file", str(admin_file))).start()
    try:
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(variable, raising=False)
        with pytest.raises(MlflowException) as refused:  # no credentials: no write, no read
            MlflowClient(server.uri).create_experiment("anonymous")
        assert refused.value.get_http_status_code() == 401
        from mlflow.server import get_app_client

        for variable, value in as_user("admin", ADMIN_PASSWORD).items():
            monkeypatch.setenv(variable, value)
        users = get_app_client("basic-auth", tracking_uri=server.uri)
        users.create_user("alice", ALICE_PASSWORD)
        users.create_user("bob", BOB_PASSWORD)
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(variable)

        (tmp_path / "space.yaml").write_text(SPACE)
        run = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--tracking-uri", server.uri, env=as_user("alice", ALICE_PASSWORD),
                       timeout=600)
        # bob reads alice's sweep (READ, the default permission) but may not log to it
        best = ratsweep(tmp_path, "best", "team", "--include-smoke", "--tracking-uri", server.uri, env=as_user("bob", BOB_PASSWORD))
        assert "activation" in best.stdout
        denied = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--tracking-uri", server.uri, env=as_user("bob", BOB_PASSWORD),
                          check=False)
        [line] = [line for line in denied.stderr.splitlines() if line.startswith("ratsweep")]  # (Ray's own warning aside)
        assert denied.returncode == 2 and "refused 'bob' (403 Forbidden on /api/2.0/mlflow/runs/create)" in line, denied.stderr
        assert "MLFLOW_TRACKING_USERNAME" in line and "Traceback" not in denied.stderr
        wrong = ratsweep(tmp_path, "best", "team", "--tracking-uri", server.uri, env=as_user("bob", "not-his"), check=False)
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "refused the credentials (401 Unauthorized): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in wrong.stderr

        client = MlflowClient(server.uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ALICE_PASSWORD)
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert len(runs) == 3  # the sweep and its two trials; bob's attempt left none
        downloaded = Path(client.download_artifacts(runs[0].info.run_id, "", str(tmp_path / "download")))
        texts = [str(r.data.params) + str(r.data.tags) for r in runs] + [run.stdout + run.stderr + best.stdout + denied.stderr]
        texts += [p.read_bytes().decode("latin1") for p in downloaded.rglob("*") if p.is_file()]
        texts += list(command_lines(server.proc.pid).values())
        for secret in SECRETS:
            assert not any(secret in text for text in texts), secret
    finally:
        server.stop()
    assert not any(secret in (server.folder / "server.log").read_text() for secret in SECRETS)


def test_a_job_on_a_two_node_cluster_logs_with_credentials_from_its_runtime_env(tmp_path, postgres, monkeypatch):
    """The nodes know nothing of the tracking server's users: `ratsweep submit` gives the job the
    submitter's MLflow credentials in its runtime env; the job's command line and logs hold none."""
    store, _ = tracking_server.without_password(postgres)
    admin_file = private_file(tmp_path / "admin_password", ADMIN_PASSWORD)
    server = MlflowServer(tmp_path / "mlflow", postgres=store, env={"PGPASSWORD": DB_PASSWORD},
                          args=("--auth", "--admin-password-file", str(admin_file))).start()
    cluster = RayCluster()
    try:
        from mlflow.server import get_app_client

        for variable, value in as_user("admin", ADMIN_PASSWORD).items():
            monkeypatch.setenv(variable, value)
        users = get_app_client("basic-auth", tracking_uri=server.uri)
        users.create_user("alice", ALICE_PASSWORD)
        cluster.start()
        (tmp_path / "space.yaml").write_text(SPACE.replace("name: team", "name: submitted"))
        submitted = subprocess.run([str(BIN / "ratsweep"), "submit", str(tmp_path / "space.yaml"), "--smoke", "--address", cluster.address,
                                    "--tracking-uri", server.uri, "--storage", str(tmp_path / "results")],
                                   cwd=tmp_path, env={**cluster.env, **as_user("alice", ALICE_PASSWORD)}, capture_output=True, text=True,
                                   timeout=300)
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        job = submitted.stdout.split()[2]
        logs, status = cluster.wait_for_job(job)
        assert "succeeded" in status.lower(), logs[-3000:]
        # the job as Ray keeps it (a client of its own: this process's Ray read its auth settings at import)
        show = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; "
                "i = C(sys.argv[1]).get_job_info(sys.argv[2]); print(json.dumps([i.entrypoint, i.runtime_env['env_vars']]))")
        listed, carried = json.loads(subprocess.run([sys.executable, "-c", show, cluster.address, job], env=cluster.env,
                                                    capture_output=True, text=True, timeout=120, check=True).stdout)
        assert "--tracking-uri=" + server.uri in listed  # the command `ray job list` and the dashboard show: no credentials
        # they travel in the runtime env (shown only to holders of the Ray token, who run code on the cluster anyway)
        assert carried["MLFLOW_TRACKING_USERNAME"] == "alice" and carried["MLFLOW_TRACKING_PASSWORD"] == ALICE_PASSWORD
        client = MlflowClient(server.uri)
        runs, [sweep] = trial_runs(client, "submitted")
        assert len(runs) == 2 and sweep.info.status == "FINISHED"
        # the job signed in as alice: she created the sweep's experiment, so she manages it
        assert users.get_user_permission("alice", "experiment", sweep.info.experiment_id).permission == "MANAGE"
        texts = [logs, listed, submitted.stdout + submitted.stderr] + [str(r.data.params) + str(r.data.tags) for r in runs]
        texts += list(command_lines(server.proc.pid, cluster.head.pid, *(w.pid for w in cluster.workers)).values())
        found = [(i, secret) for i, text in enumerate(texts) for secret in SECRETS if secret in text]
        assert not found, found
    finally:
        cluster.stop()
        server.stop()
