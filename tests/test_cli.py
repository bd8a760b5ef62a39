import subprocess
import sys


def test_check_reports_working_cpu_kernels():
    proc = subprocess.run([sys.executable, "-m", "ratsweep", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu kernels: ok" in proc.stdout


def test_check_fails_when_no_kernel_can_be_built():
    env = {"CXX": "/nonexistent/c++", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "ratsweep", "check"], capture_output=True, text=True, env={**env, "RATSWEEP_CACHE_DIR": "/tmp/ratsweep-test-nocxx"})
    assert proc.returncode == 1, proc.stderr
    assert "cpu kernels: FAILED" in proc.stdout and "no C++ compiler found" in proc.stdout
    assert "Traceback" not in proc.stderr
