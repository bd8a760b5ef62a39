"""CIFAR-10 epoch speed: VGG4/VGG8, GELU vs rational, fp32 (the paper's precision, TF32 convolutions as
PyTorch defaults) vs bf16 autocast (`amp`), one trial at a time vs several packed per GPU.

    python benchmarks/cifar_epoch.py                       # on the GPU if there is one
    python benchmarks/cifar_epoch.py --pack 4 --output benchmarks/results/cifar_epoch_h100.md

Each measurement runs the real experiment (`ratsweep.experiments.cifar10.run`: data on the device,
batched augmentation, per-epoch evaluation and checkpoint state) in a fresh worker process, so peak
memory is per configuration. The first epoch is warm-up (kernel compilation, cuDNN autotuning);
the rest are timed. Ratios are against GELU on the same model in the same run. Without real
CIFAR-10 under --data-dir, random pixels in the real format are used: fine for timing, and no
accuracy is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine import device_name, versions  # benchmarks/ is the script folder: on sys.path

HERE = Path(__file__).resolve()
PAPER_EPOCHS = 60  # one paper trial
TABLE1_TRIALS_PER_CONFIG = 5  # seeds 0-4


def write_random_cifar(root: Path, train: int, test: int) -> Path:
    """Random uint8 images in the cifar-10-batches-py format (timing only)."""
    import pickle

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = -(-train // 5)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        content = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, size=n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=4)
    return root


def worker(args: argparse.Namespace) -> None:
    """One trial's epochs; prints one JSON line."""
    from ratsweep import config
    from ratsweep.experiments import cifar10
    from ratsweep.experiments.common import LocalSession

    values = {"model": args.model, "activation": args.activation, "recipe": args.recipe, "epochs": args.epochs,
              "amp": args.precision == "bf16"}
    if args.activation == "rational":
        values["rational.init"] = "gelu"
    session = LocalSession(data_dir=args.data_dir)
    cuda = torch.cuda.is_available()
    cifar10.run(config.build(cifar10.Cifar10Config, values), session)
    times = [m["epoch_time_s"] for m in session.history]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (_, train_labels), _ = cifar10.load(str(Path(args.data_dir).resolve()))  # cached: no second decode
    print(json.dumps({"epoch_times": times, "peak_bytes": peak, "train_images": len(train_labels)}), flush=True)


def launch(args: argparse.Namespace, model: str, activation: str, precision: str, copies: int = 1) -> list[dict]:
    """Run `copies` workers at once (packed on one device); their JSON results."""
    command = [sys.executable, str(HERE), "--worker", "--model", model, "--activation", activation, "--recipe", args.recipe,
               "--epochs", str(args.epochs), "--data-dir", str(args.data_dir), "--precision", precision]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)})
             for _ in range(copies)]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"worker {model}/{activation} failed with exit code {proc.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def steady(result: dict) -> float:
    """Median epoch time after the warm-up epoch."""
    return statistics.median(result["epoch_times"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg4", "vgg8"])
    parser.add_argument("--activations", nargs="+", default=["gelu", "rational"])
    parser.add_argument("--recipe", default="baseline", choices=["baseline", "augmented"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="fp32: the paper's (amp=false); bf16: autocast (amp=true, CUDA only)")
    parser.add_argument("--epochs", type=int, default=3, help="per measurement; the first is warm-up")
    parser.add_argument("--train-images", type=int, help="random-pixel data set size (default: 50,000 on a GPU, 2,048 on CPU)")
    parser.add_argument("--pack", type=int, default=4, help="trials sharing the GPU in the packing test (CUDA only; 0 = skip)")
    parser.add_argument("--data-dir", help="real CIFAR-10 (cifar-10-batches-py) here; default: random pixels")
    parser.add_argument("--output", help="also write the results as Markdown here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--activation", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cuda = torch.cuda.is_available()
    args.train_images = args.train_images or (50_000 if cuda else 2_048)
    if args.epochs < 2:
        parser.error("--epochs: expected at least 2 (the first is warm-up)")
    if not cuda and "bf16" in args.precisions:  # autocast is CUDA-only in the experiment: it would time fp32 twice
        args.precisions = [p for p in args.precisions if p != "bf16"] or ["fp32"]
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cifar-bench-")
        args.data_dir = write_random_cifar(Path(tmp.name), args.train_images, 10_000 if cuda else 1_000)
        data_note = "random pixels in the CIFAR-10 format (timing only)"
    else:
        data_note = f"CIFAR-10 from {args.data_dir}"
    lines = [
        "# CIFAR-10 epoch benchmark",
        "",
        f"- date: {datetime.date.today()}; device: {device_name()}",
        f"- {versions()}",
        f"- command: python benchmarks/{HERE.name} {' '.join(sys.argv[1:])}",
        f"- recipe {args.recipe}, batch 128, data: {data_note}",
        f"- each row: median of epochs 2..{args.epochs} of one trial in its own process (epoch 1 is warm-up);"
        " an epoch includes the test-set evaluation",
        "- peak memory: torch.cuda.max_memory_allocated on a GPU; the worker process's max RSS on CPU",
        "",
        "| model | activation | precision | train images | s / epoch | images / s | vs GELU | 60 epochs of 50k (min) | peak memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    measured: dict[tuple[str, str, str], float] = {}
    for model in args.models:
        for precision in args.precisions:
            for activation in args.activations:
                [result] = launch(args, model, activation, precision)
                seconds, args.train_images = steady(result), result["train_images"]
                measured[model, activation, precision] = seconds
                baseline = measured.get((model, "gelu", precision))
                ratio = f"{seconds / baseline:.2f}x" if baseline else "-"
                minutes = seconds * PAPER_EPOCHS * 50_000 / args.train_images / 60
                row = (f"| {model} | {activation} | {precision} | {args.train_images:,} | {seconds:.3f} | {args.train_images / seconds:,.0f} | "
                       f"{ratio} | {minutes:.1f} | {result['peak_bytes'] / 2**20:,.0f} |")
                lines.append(row)
                print(row, flush=True)

    if cuda and args.pack > 1:  # at the paper's precision (the table spaces pin fp32)
        model, activation, precision = args.models[0], args.activations[-1], args.precisions[0]
        alone = args.train_images / measured[model, activation, precision]
        results = launch(args, model, activation, precision, copies=args.pack)
        packed = sum(args.train_images / steady(r) for r in results)
        lines += ["", f"Packing: {args.pack} {model}/{activation}/{precision} trials at once on one GPU: {packed:,.0f} images/s in total vs "
                  f"{alone:,.0f} alone ({packed / alone:.2f}x throughput; resources.gpu: {1 / args.pack:g} in the search spaces)."]
        configs = [(m, a, precision) for m in args.models for a in args.activations]
        hours = sum(measured[c] for c in configs) * PAPER_EPOCHS * 50_000 / args.train_images * TABLE1_TRIALS_PER_CONFIG
        lines.append(f"Estimated Table 1 ({TABLE1_TRIALS_PER_CONFIG} seeds of each row above, {PAPER_EPOCHS} epochs): "
                     f"{hours / 3600:.2f} GPU-hours one at a time, {hours / 3600 / (packed / alone):.2f} packed.")
        print("\n".join(lines[-3:]), flush=True)
    elif not cuda:
        lines += ["", "No CUDA device: bf16 autocast, the GPU targets (60-epoch VGG4 trial <= 3 min, rational <= 1.1x GELU, "
                  "Table 1 < 1 GPU-hour) and the packing test need one. CPU rows extrapolate to 50,000 images."]
        print(lines[-1])
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.output}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
