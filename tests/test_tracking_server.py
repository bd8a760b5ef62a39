"""`ratsweep server`: a real PostgreSQL (initdb/pg_ctl in a temporary folder, 127.0.0.1) behind
`mlflow server`, a sweep logged to it, and no secret (the database's password, a password in the
tracking URI) in what the sweep prints or in any param, tag or artifact."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from helpers import ratsweep
from services import MlflowServer, Postgres

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
    wrong = postgres.replace(DB_PASSWORD, "not-the-password")
    proc = ratsweep(tmp_path, "server", "--backend-store-uri", wrong, "--artifacts-destination", str(tmp_path), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot connect to postgresql://ratsweep:***@127.0.0.1" in proc.stderr and "not-the-password" not in proc.stderr


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
    first = (server.folder / "server.log").read_text().split("\n")[0]
    assert DB_PASSWORD not in first and "--tracking-uri http://127.0.0.1:" in first, first


def test_the_database_pool_is_sized_per_worker_and_checked_against_max_connections(tmp_path, postgres):
    too_many = ratsweep(tmp_path, "server", "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path),
                        "--workers", "10", "--db-pool", "5", check=False)  # 200 connections; the test database allows 197
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
