"""The deployment files say what the README says and what the tests run: deploy/ray-cluster.yaml
passes Ray's own cluster-config schema, deploy/compose.yaml runs `ratsweep server`'s command line,
and both name the ports, images and commands of the README's cluster section."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from services import RayCluster

from ratsweep.sweep import server

REPO = Path(__file__).resolve().parent.parent
CLUSTER = yaml.safe_load((REPO / "deploy" / "ray-cluster.yaml").read_text())
COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())


def readme_section() -> str:
    """The docs' cluster page (it was the README's cluster section)."""
    return (REPO / "docs" / "clusters.md").read_text()


def readme_cluster_commands() -> list[str]:
    """The README cluster section's shell lines (continuations joined, comments dropped)."""
    block = readme_section().split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def flags(command: str | list[str]) -> dict[str, str]:
    """--name=value / --name value / --flag of a command line, by name."""
    words = shlex.split(command) if isinstance(command, str) else command
    out, i = {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, _, value = word.partition("=")
            if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value, i = words[i + 1], i + 1
            out[name] = value
        i += 1
    return out


def ray_start(commands: list[str], kind: str) -> str:
    [line] = [c for c in commands if c.startswith("ray start") and ("--head" in c) == (kind == "head")]
    return line


def test_the_cluster_config_passes_rays_schema_and_points_nodes_at_storage_tracking_and_token():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(CLUSTER))  # what `ray up` checks first
    with pytest.raises(Exception, match="head_node_typo|Additional properties"):
        validate_config(prepare_config({**CLUSTER, "head_node_typo": "head"}))  # the check can fail

    gpu = CLUSTER["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
    assert gpu.startswith(("g4dn", "g5", "g6", "p3", "p4", "p5")) and CLUSTER["head_node_type"] == "head"
    setup = "\n".join(CLUSTER["setup_commands"])
    [install] = re.findall(r"pip install --quiet '(ratsweep\[(\w+)\])'", setup)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert install[1] in extras and extras[install[1]][0].startswith("cupy")  # the CUDA kernels' CuPy on GPU nodes
    assert "mount -t nfs4" in setup and "/shared" in setup
    assert "export MLFLOW_TRACKING_URI=http://MLFLOW_HOST:5000" in setup
    assert "echo 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat ~/ratsweep_auth_token)' >> ~/.bashrc" in setup  # not the token itself
    assert "chmod 600 ~/ratsweep_auth_token" in setup
    assert "~/ratsweep_auth_token" in CLUSTER["file_mounts"]


def test_the_readme_starts_the_nodes_as_the_cluster_config_and_the_tests_do():
    commands = readme_cluster_commands()
    assert "ray up deploy/ray-cluster.yaml" in commands
    head, worker = flags(ray_start(commands, "head")), flags(ray_start(commands, "worker"))
    config_head = flags(CLUSTER["head_start_ray_commands"][-1])
    config_worker = flags(CLUSTER["worker_start_ray_commands"][-1])
    # by hand the same, but blocking in the foreground; the autoscaler's bootstrap config is ray up's own
    assert head == {**{k: v for k, v in config_head.items() if k != "--autoscaling-config"}, "--block": ""}
    assert worker == {"--address": config_worker["--address"].replace("$RAY_HEAD_IP", "HEAD"), "--block": ""}
    # the tests start their nodes with every flag the README gives (on 127.0.0.1 and free ports)
    cluster = RayCluster()
    assert set(head) <= set(flags(cluster.head_command("/tmp/t"))) and set(worker) <= set(flags(cluster.worker_command("/tmp/t")))
    # the ports the README's clients use are the ones the nodes open
    submit = flags(next(c for c in commands if c.startswith("ratsweep submit")))
    assert submit["--address"] == f"http://HEAD:{head['--dashboard-port']}" and worker["--address"] == f"HEAD:{head['--port']}"
    assert any(c.startswith("export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=") for c in commands)
    # the token file is created private (umask 077), here and in the cluster config's instructions
    assert any(c.startswith("(umask 077;") and "> ~/.ratsweep/ray_auth_token" in c for c in commands)
    assert "(umask 077; mkdir -p ~/.ratsweep;" in (REPO / "deploy" / "ray-cluster.yaml").read_text()


def test_the_compose_file_runs_ratsweep_servers_command_on_the_readmes_ports_and_images():
    services = COMPOSE["services"]
    postgres, mlflow = services["postgres"], services["mlflow"]
    shell = mlflow["command"][-1]
    install, config, secret_key, run = shell.split("&&")
    words = shlex.split(run.strip())
    assert words[0] == "exec"
    expected = server.command("/mlartifacts", "0.0.0.0", 5000, 2, "$${MLFLOW_ALLOWED_HOSTS}", auth=True)
    assert words[1:] == ["mlflow", *expected[3:]]  # ratsweep server's argv after `python -m mlflow`: no secret in it
    assert "psycopg2-binary" in install and "mlflow[auth]==" in install
    # no password on any command line: libpq reads PGPASSWORD, MLflow the admin's from its own variable
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow@postgres:5432/mlflow"
    assert env["PGPASSWORD"].startswith("${MLFLOW_DB_PASSWORD:?") and env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert "PASSWORD" not in shell.replace("MLFLOW_AUTH_CONFIG_PATH", "")
    # the auth config: what ratsweep server writes, the database the runs' (users beside the runs)
    assert 'database_uri = %s' in config and '"$${MLFLOW_BACKEND_STORE_URI}"' in config and "default_permission = READ" in config
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in secret_key and "token_hex" in secret_key
    assert services["tls"]["profiles"] == ["tls"] and "reverse-proxy" in services["tls"]["command"]
    pg_env = postgres["environment"]
    assert (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"]) == ("mlflow", "mlflow") and ":5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["ports"] == ["${MLFLOW_BIND:-0.0.0.0}:5000:5000"] and "artifacts:/mlartifacts" in mlflow["volumes"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"

    commands, section = readme_cluster_commands(), readme_section()
    assert any(c.endswith("docker compose -f deploy/compose.yaml up -d") and "MLFLOW_DB_PASSWORD=" in c for c in commands)
    for service in services.values():
        assert service["image"] in section
    tracking = {flags(c)["--tracking-uri"] for c in commands if "--tracking-uri" in c}
    assert tracking == {"http://MLFLOW_HOST:5000"} and "MLFLOW_HOST:5000" in "\n".join(CLUSTER["setup_commands"])
