"""benchmarks/gpu_acceptance.sh, the one script a lent GPU runs, checked where there is none: its syntax,
a quick run on this machine (every step runs and lands in the report; the GPU parts skip), and that a
failing step neither stops the later ones nor hides its cause."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.sh"
STEPS = ["environment", "wheels", "kernel check", "CUDA tests", "graph capture, fullgraph compile", "kernel benchmark",
         "CIFAR-10 VGG4, rational vs GELU", "RL updates, eager and CUDA graphs"]


def run(out: Path, python: str) -> tuple[subprocess.CompletedProcess, dict[str, tuple[str, str]], str]:
    env = {**os.environ, "PYTHON": python, "WHEELS": str(out / "no-wheels")}
    proc = subprocess.run([str(SCRIPT), "--quick", "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    (report_file,) = out.glob("gpu_acceptance_*.md")
    report = report_file.read_text()
    rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| ([^|]+?) \| (passed|FAILED|skipped) \| \d+ \| (.*) \|$", report, re.M)}
    return proc, rows, report


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_a_quick_run_passes_every_step_and_writes_its_results(tmp_path):
    proc, rows, report = run(tmp_path, sys.executable)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert list(rows) == STEPS and {status for status, _ in rows.values()} == {"passed"}, report
    assert re.search(r"- date: \d{4}-\d\d-\d\dT", report) and "torch 2." in report and "cupy " in report
    assert re.search(r"\d+ passed", rows["CUDA tests"][1])
    (kernels,) = tmp_path.glob("rational_kernels_*.md")
    assert "| rational[" in kernels.read_text() and "copy:" in kernels.read_text()
    (cifar,) = tmp_path.glob("cifar_epoch_*.md")
    assert "| vgg4 | rational |" in cifar.read_text()
    (rl,) = tmp_path.glob("rl_updates_*.md")
    assert "| iql | compiled | rational |" in rl.read_text()
    (log,) = tmp_path.glob("gpu_acceptance_*.log")
    assert "=== kernel benchmark" in log.read_text()


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    """With an interpreter that sees no installed packages, the steps fail one after the other, each
    with its own cause in the table, and the run exits 1."""
    bare = tmp_path / "python-without-packages"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    proc, rows, report = run(tmp_path / "out", str(bare))
    assert proc.returncode == 1
    assert list(rows) == STEPS, report
    assert rows["environment"] == ("FAILED", "exit 1: ModuleNotFoundError: No module named 'torch'")
    assert rows["wheels"][0] == "FAILED" and "--fetch-wheels" in rows["wheels"][1]
    assert rows["CUDA tests"][0] == "FAILED" and "No module named pytest" in rows["CUDA tests"][1]
