"""The `ratsweep` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import platform
import sys
import time


def check(args: argparse.Namespace) -> int:
    """Which rational kernels run here, checked against the reference path. Exit 1 if one is broken."""
    import torch

    import ratsweep
    from ratsweep.rational import cpu, cuda, reference
    from ratsweep.rational._native import KernelError

    print(f"ratsweep {ratsweep.__version__} | torch {torch.__version__} | python {platform.python_version()}")
    devices = [("cpu", torch.device("cpu"), cpu, f"C++ compiler: {cpu.compiler() or 'none (set CXX)'}")]
    if torch.cuda.is_available():
        note = "CuPy installed" if cuda.available() else "CuPy missing: pip install 'ratsweep[cuda12]' or '[cuda13]'"
        devices.append(("cuda", torch.device("cuda"), cuda, f"{torch.cuda.get_device_name()}, {note}"))
    else:
        print("cuda kernels: no CUDA device")
    failed = False
    for name, device, backend, note in devices:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1 << 16, generator=g).to(device)
        a, b = torch.randn(6, generator=g).to(device), torch.randn(4, generator=g).to(device)
        t0 = time.perf_counter()
        try:
            y = backend.forward(x, a, b, "A")
        except KernelError as e:
            print(f"{name} kernels: FAILED ({note})\n  {e}")
            failed = True
            continue
        err = (y.double() - reference.forward(x.double(), a.double(), b.double(), "A")).abs().max().item()
        status = "ok" if err < 1e-4 else "WRONG RESULTS"
        failed |= status != "ok"
        print(f"{name} kernels: {status} ({note}; first call {time.perf_counter() - t0:.1f} s, max |error| {err:.1e})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    import ratsweep

    parser = argparse.ArgumentParser(prog="ratsweep", description="Sweeps of trainable rational vs fixed activations.")
    parser.add_argument("--version", action="version", version=f"ratsweep {ratsweep.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help=check.__doc__.split(".")[0]).set_defaults(run=check)
    args = parser.parse_args(argv)
    sys.exit(args.run(args))
