"""Real services for the tests and the load benchmark, each in a temporary folder on 127.0.0.1 free
ports, each ended by the pids it started (never by name, never `ray stop`, which would end every Ray
on the machine): PostgreSQL, an MLflow tracking server, a Ray cluster of a head and workers."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent  # this environment's `ray`, `python`
REPO = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).parent / "plugin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first found first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def end(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM a process started in its own session and everything below it, then SIGKILL what is left."""
    if proc is None or proc.poll() is not None:
        return
    tree = [proc.pid, *descendants(proc.pid)]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    kill(tree)  # children that left the process group (Ray's workers) or ignored the signal
    proc.wait()


def install_plugin(site: Path) -> dict[str, str]:
    """The test plugin (experiment `toy`) installed into `site`; the environment that sees it."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(PLUGIN)],
                   check=True, capture_output=True, timeout=300)
    # no empty entry: that would mean "the current directory" to every process started with it
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


class Postgres:
    """A fresh PostgreSQL cluster with password auth and a database `mlflow`; `uri` names it."""

    def __init__(self, password: str = "pg-s3cret-7"):
        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl are not on PATH: .ci/run installs them (apt-get install postgresql)")
        self.password, self.port = password, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="rs-pg-"))  # not under pytest's root-only tmp: the postgres user reads it
        self.data = self.folder / "data"
        self.uri = f"postgresql://ratsweep:{password}@127.0.0.1:{self.port}/mlflow"

    def start(self) -> Postgres:
        import psycopg2  # noqa: PLC0415

        self.folder.chmod(0o755)
        (self.folder / "password").write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.folder / "password", "postgres")
        subprocess.run(as_postgres("initdb", "-D", str(self.data), "-U", "ratsweep", "--auth=scram-sha-256",
                                   f"--pwfile={self.folder / 'password'}"), check=True, capture_output=True)
        subprocess.run(as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start",
                                   "-o", f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c max_connections=200"),
                       check=True, capture_output=True)
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="ratsweep", password=self.password, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        return self

    def stop(self) -> None:
        subprocess.run(as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"), capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a free port: on PostgreSQL through `ratsweep server` when given its URI (with
    `args` and `env` added to its command line and environment), else on a SQLite file in `folder`;
    artifacts in `folder`. stop() and start() again keep both."""

    def __init__(self, folder: Path, postgres: str | None = None, workers: int = 1, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.folder, self.postgres, self.workers, self.args, self.env = folder, postgres, workers, args, env or {}
        self.port, self.proc = free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        common = ["--artifacts-destination", str(self.folder / "artifacts"), "--port", str(self.port), "--workers", str(self.workers)]
        if self.postgres:
            return [sys.executable, "-m", "ratsweep", "server", "--backend-store-uri", self.postgres, *common, *self.args]
        return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--backend-store-uri",
                f"sqlite:///{self.folder / 'server.db'}", *common]

    def start(self) -> MlflowServer:
        with open(self.folder / "server.log", "a") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env, "PYTHONPATH": str(REPO)})
        deadline = time.time() + 90
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not come up: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        end(self.proc, timeout=20)
        self.proc = None


class RayCluster:
    """A head and `workers` worker nodes on this machine, as the README starts them: `ray start
    --block`, each node its own --temp-dir and ports, one RAY_AUTH_TOKEN for all (token auth is on
    by default since Ray 2.60). `env` is what a client (ray job submit, ratsweep submit) needs."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, extra_env: dict[str, str] | None = None):
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.env = {
            **os.environ, **(extra_env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),  # the job's `python`
            # a dead node is noticed in seconds, not the default half minute
            "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
        }
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        self.address = f"http://127.0.0.1:{self.dashboard_port}"  # for `ray job submit` / `ratsweep submit`
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []

    def head_command(self, temp_dir: str) -> list[str]:
        """The README's head command, on 127.0.0.1 and this cluster's ports."""
        return self._command(temp_dir, "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true", f"--num-cpus={self.head_cpus}")

    def worker_command(self, temp_dir: str) -> list[str]:
        """The README's worker command."""
        return self._command(temp_dir, f"--address={self.gcs}", f"--num-cpus={self.worker_cpus}")

    def _command(self, temp_dir: str, *args: str) -> list[str]:
        # two nodes on one machine: each its own temp dir and dashboard agent port
        return [str(BIN / "ray"), "start", *args, "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]

    def _node(self, command) -> subprocess.Popen:
        temp = tempfile.mkdtemp(prefix="rs-ray-")  # short: Ray's socket paths live under it
        self.temp_dirs.append(temp)
        return subprocess.Popen(command(temp), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> RayCluster:
        self.head = self._node(self.head_command)
        self.add_worker()
        return self

    def add_worker(self) -> None:
        self.workers.append(self._node(self.worker_command))
        self.wait_for_nodes(1 + sum(w.poll() is None for w in self.workers))

    def alive_nodes(self) -> int:
        status = subprocess.run([str(BIN / "ray"), "status", f"--address={self.gcs}"], env=self.env, capture_output=True, text=True)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in status.stdout else ""
        return len(re.findall(r"\bnode_[0-9a-f]+", active))

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"the Ray head exited {self.head.returncode}")
            if self.alive_nodes() == count:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {count} live nodes")

    def job_logs(self, job: str) -> str:
        """What a job has printed so far."""
        return subprocess.run([str(BIN / "ray"), "job", "logs", "--address", self.address, job], env=self.env,
                              capture_output=True, text=True, timeout=60).stdout

    def wait_for_job(self, job: str, timeout: float = 600) -> tuple[str, str]:
        """A job's whole log once it has ended, and its final status (polled: `ray job logs --follow`
        can stall after a node dies)."""
        deadline = time.time() + timeout
        while True:
            status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", self.address, job], env=self.env,
                                    capture_output=True, text=True, timeout=60).stdout
            if any(end in status for end in ("succeeded", "failed", "stopped")):
                return self.job_logs(job), status
            if time.time() > deadline:
                raise TimeoutError(f"job {job} did not end in {timeout} s:\n{self.job_logs(job)[-3000:]}")
            time.sleep(2)

    def kill_worker(self) -> None:
        """A node dying: SIGKILL its raylet, its workers and the rest of its processes, no cleanup."""
        worker = self.workers.pop()
        kill([*descendants(worker.pid), worker.pid])
        worker.wait()

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            end(node, timeout=60)
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def team(folder: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[RayCluster, MlflowServer]]:
    """A team's setup: PostgreSQL, `ratsweep server` on it (artifacts under `folder`), a Ray head and
    a worker; ended in reverse order whatever happens."""
    with contextlib.ExitStack() as stack:
        postgres = Postgres().start()
        stack.callback(postgres.stop)
        server = MlflowServer(folder / "mlflow", postgres=postgres.uri, workers=2).start()
        stack.callback(server.stop)
        cluster = RayCluster(extra_env=extra_env)
        stack.callback(cluster.stop)
        yield cluster.start(), server
