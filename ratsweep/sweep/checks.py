"""What `ratsweep run` checks before anything starts, each a one-line UserError: the cluster's address
and resources, room for a local Ray, the data the trials read, and that --resume finds the sweep it
continues, unchanged."""

from __future__ import annotations

import functools
import json
import shutil
import socket
from pathlib import Path

import ray

from .. import config as cfg
from .. import registry
from ..errors import SpaceError, UserError
from . import ray_internals
from .space import Space
from .resume import SWEEP_FILE, latest_sweep


ADDRESS_TIMEOUT_S = 5  # for a Ray head to answer --address (ray.init would retry a dead one for ever)


# A gRPC server (as a Ray head's GCS is) answers HTTP/2's client preface with a SETTINGS frame (type 4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str | None) -> None:
    """--address is a running Ray head's GCS address (HOST:PORT, as `ray start --head` prints it) or
    auto: checked within ADDRESS_TIMEOUT_S, or one line."""
    if address is None or address in ("auto", "local"):
        return
    if address.startswith("ray://"):  # Tune would run on the head, writing there to this machine's paths
        raise UserError(f"--address: {address}: Ray Client (ray://) is not supported; send the sweep to the cluster "
                        "with `ratsweep submit --address http://HEAD:8265`, or run on a node with --address HEAD:6379")
    host, sep, port = address.rpartition(":")
    if "://" in address or not (sep and host and port.isdigit()):
        raise UserError(f"--address: expected a Ray head's HOST:PORT as `ray start --head` prints it (e.g. 10.0.0.5:6379), "
                        f"or auto, got {address!r}" + ("; a dashboard's http:// address is for ratsweep submit" if "://" in address else ""))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = connection.recv(9)
    except OSError as e:
        raise UserError(f"--address: no Ray head answers at {address} ({e.strerror or e}); start one there with "
                        "`ray start --head`, or leave out --address for a local Ray") from None
    if len(reply) < 4 or reply[3] != 4:
        raise UserError(f"--address: {address} answers, but not as a Ray head's GCS port (`ray start --head` prints "
                        "it, port 6379 by default; a dashboard, port 8265, is for ratsweep submit)")


# A local Ray keeps its session (sockets, every worker's log) in its temporary folder: on a full disk
# it fails a minute later with a timeout naming a port file.
MIN_RAY_TEMP_FREE_MB = 100


def free_mb(path: Path) -> float:
    """Free space where the path is (or would be created)."""
    return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 2**20


def check_ray_temp() -> None:
    """Room for a local Ray's session, or one line saying where it is short of it."""
    root = ray_internals.ray_temp_root()
    free = free_mb(root)
    if free < MIN_RAY_TEMP_FREE_MB:
        raise UserError(f"Ray's temporary folder {root} has {free:.0f} MB free, a local Ray needs at least "
                        f"{MIN_RAY_TEMP_FREE_MB} MB: free some space there, or set RAY_TMPDIR to a folder with room")


def check_cluster(space: Space, smoke: bool = False) -> None:
    """Resources the cluster cannot give would leave trials pending forever: refuse up front.
    A smoke run shrinks trials to run anywhere: each takes one CPU, and on CPU where the cluster has
    no GPU; what the real run asks for is still checked, and what it would be refused is said."""
    available = ray.cluster_resources()
    refusals = []
    for name, key in (("cpu", "CPU"), ("gpu", "GPU")):
        need, have = space.resources[name], available.get(key, 0.0)
        if need > have:
            what = f"at most {have:g} (this cluster has {have:g} {key}s)" if have else f"0 (this cluster has no {key})"
            refusals.append(f"{space.path}: resources.{name}: expected {what}, got {need:g}")
    if not smoke:
        if refusals:
            raise SpaceError(refusals[0])
        return
    for refusal in refusals:
        print(f"ratsweep: --smoke: {refusal}; a run without --smoke is refused here", flush=True)
    space.resources["cpu"] = min(space.resources["cpu"], 1.0)
    if space.resources["gpu"] > 0 and not available.get("GPU"):
        print(f"ratsweep: {space.name}: --smoke on a cluster without GPUs: trials run on CPU", flush=True)
    space.resources["gpu"] = min(space.resources["gpu"], available.get("GPU", 0.0))


def check_data(space: Space, data_dir: str) -> None:
    """The experiment's registered datasets are under data_dir (DataError saying how to get them);
    a dataset with `keys` is asked only for the values of those keys this sweep can take."""
    experiment = registry.get_experiment(space.experiment)
    for name in experiment.datasets:
        dataset = registry.get_dataset(name)
        dataset.verify(Path(data_dir), **{key: values for key in dataset.keys if (values := sweep_values(space, key)) is not None})


def sweep_values(space: Space, key: str) -> tuple | None:
    """The values a key can take in the sweep: its fixed value, its grid or choice, else the
    experiment's default; None where a searcher samples it from a range."""
    if key in space.config:
        return (space.config[key],)
    domain = space.search_space.get(key)
    if domain is not None:
        return tuple(domain.values) if domain.kind in ("grid", "choice") else None
    config_class = registry.get_experiment(space.experiment).config
    if key not in cfg.keys(config_class):
        return None
    return (functools.reduce(getattr, key.split("."), cfg.build(config_class)),)


def check_resumable(spaces: list[Space], storage: str, smoke: bool) -> None:
    """--resume with no sweep of the file under --storage (a mistyped --storage, a first run) is one
    line, not every trial run again; a file's sweeps that never started do start when another
    resumes. A sweep whose space changed since it began (or --smoke, or --set) is refused: Tune
    would go on with the old search, silently, and the new fixed config would apply to only some trials."""
    folder = Path(storage).expanduser().resolve()
    previous = {space.name: latest_sweep(folder, space.name) for space in spaces}
    if not any(previous.values()):
        names = ", ".join(repr(space.name) for space in spaces)
        raise UserError(f"--resume: expected an earlier sweep of {names} under {folder}, found none; "
                        "check --storage, or run without --resume to start afresh")
    for space in spaces:
        try:
            marker = json.loads((previous[space.name] / SWEEP_FILE).read_text()) if previous[space.name] else {}
            began = {**marker["definition"], "smoke": marker["smoke"]}
        except (ValueError, KeyError, TypeError):  # a sweep of an earlier ratsweep, or a damaged file (run_sweep says so)
            continue
        changed = _changes(began, {**space.definition(), "smoke": smoke})
        if changed:
            raise UserError(f"--resume: {space.path}: {space.name} is not the sweep that began in {previous[space.name]} "
                            f"(changed since: {', '.join(changed)}); a resumed sweep goes on as it began: put the file "
                            "(and --set, --smoke) back as they were, or run without --resume to start a new sweep")


def _changes(began: dict, now: dict) -> list[str]:
    """The keys whose values differ, as a space file names them (config.steps, search_space.activation)."""
    out = []
    for key in sorted(began.keys() | now.keys()):
        old, new = began.get(key), now.get(key)
        if key == "search_space" and len(old or ()) == len(new or ()) == 1:  # not a union: compare its keys
            old, new = old[0], new[0]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        else:
            out.append(key)
    return out
