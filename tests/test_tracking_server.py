"""`ratsweep server`: a real PostgreSQL (initdb/pg_ctl in a temporary folder, 127.0.0.1) behind
`mlflow server`, a sweep logged to it, and no secret (the database's password, a password in the
tracking URI) in what the sweep prints or in any param, tag or artifact."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from helpers import ratsweep

DB_PASSWORD, HTTP_PASSWORD = "pg-s3cret-7", "http-s3cret-9"
SPACE = """\
name: team
experiment: approx
metric: {name: mse, mode: min}
search_space:
  activation: {grid: [relu, rational]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def postgres():
    """A fresh cluster with password auth on a free port; yields its URI for database `mlflow`."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.fail("PostgreSQL's initdb/pg_ctl are not on PATH: .ci/run installs them (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="rs-pg-"))  # not under pytest's root-only tmp: the postgres user reads it
    folder.chmod(0o755)
    (folder / "password").write_text(DB_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "password", "postgres")
    port, data = free_port(), folder / "data"
    subprocess.run(as_postgres("initdb", "-D", str(data), "-U", "ratsweep", "--auth=scram-sha-256", f"--pwfile={folder / 'password'}"),
                   check=True, capture_output=True)
    subprocess.run(as_postgres("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "start",
                               "-o", f"-p {port} -h 127.0.0.1 -k {folder}"), check=True, capture_output=True)
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="ratsweep", password=DB_PASSWORD, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://ratsweep:{DB_PASSWORD}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_wrong_password_is_one_line_without_the_password(tmp_path, postgres):
    wrong = postgres.replace(DB_PASSWORD, "not-the-password")
    proc = ratsweep(tmp_path, "server", "--backend-store-uri", wrong, "--artifacts-destination", str(tmp_path), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot connect to postgresql://ratsweep:***@127.0.0.1" in proc.stderr and "not-the-password" not in proc.stderr


def test_a_sweep_logs_to_mlflow_on_postgres_and_no_secret_lands_anywhere(tmp_path, postgres):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ratsweep", "server", "--backend-store-uri", postgres, "--artifacts-destination",
                               str(tmp_path / "artifacts"), "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        for _ in range(120):
            if server.poll() is not None:
                raise AssertionError(f"ratsweep server exited {server.returncode}: {server.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the server did not come up")
        (tmp_path / "space.yaml").write_text(SPACE)
        uri = f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{port}"  # credentials in the URI, as for MLflow's basic-auth app
        run = ratsweep(tmp_path, "run", "space.yaml", "--smoke", "--tracking-uri", uri, timeout=600)
        assert HTTP_PASSWORD not in run.stdout + run.stderr and "alice:***@127.0.0.1" in run.stdout, run.stdout[-2000:]
        best = ratsweep(tmp_path, "best", "team", "--include-smoke", "--tracking-uri", f"http://127.0.0.1:{port}")
        assert "activation" in best.stdout
        client = MlflowClient(f"http://127.0.0.1:{port}")
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
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: their own process group
        out, _ = server.communicate(timeout=30)
    assert DB_PASSWORD not in out.split("\n")[0] and "--tracking-uri http://127.0.0.1:" in out.split("\n")[0], out[:500]
