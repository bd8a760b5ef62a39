import subprocess
import sys


def test_check_reports_working_cpu_kernels():
    proc = subprocess.run([sys.executable, "-m", "ratsweep", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu kernels: ok" in proc.stdout


def test_check_of_a_device_asked_for_fails_where_it_is_missing():
    """`--device cuda` (the GPU acceptance run's check) fails on a machine without a CUDA device; the
    default checks what is there."""
    import torch

    proc = subprocess.run([sys.executable, "-m", "ratsweep", "check", "--device", "cuda"], capture_output=True, text=True)
    if torch.cuda.is_available():
        assert "cuda kernels:" in proc.stdout and "cpu kernels" not in proc.stdout
    else:
        assert proc.returncode == 1 and "cuda kernels: no CUDA device" in proc.stdout


def test_check_fails_when_no_kernel_can_be_built():
    env = {"CXX": "/nonexistent/c++", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "ratsweep", "check"], capture_output=True, text=True, env={**env, "RATSWEEP_CACHE_DIR": "/tmp/ratsweep-test-nocxx"})
    assert proc.returncode == 1, proc.stderr
    assert "cpu kernels: FAILED" in proc.stdout and "no C++ compiler found" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_rational_core_needs_only_torch():
    """ratsweep.rational runs where only torch (and CuPy) are installed, e.g. a bare GPU node."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'scipy', 'matplotlib', 'ray', 'mlflow', 'timm', 'yaml', 'gymnasium', 'minari', 'sklearn'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import torch
from ratsweep.rational import Rational, rational_param_groups, replace_activations
layer = Rational(init='gelu')
layer(torch.randn(10, requires_grad=True)).sum().backward()
print('ok', layer.numerator.grad.abs().sum().item() > 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok True"
