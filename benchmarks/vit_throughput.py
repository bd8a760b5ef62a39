"""Tiny ImageNet training speed: ViT-S/8, CaiT-S24, Swin-T with GELU vs rational, fp32/TF32 (the
paper's) vs bf16 autocast (`amp`), and the input pipeline alone, in one run.

    python benchmarks/vit_throughput.py                          # on the GPU if there is one
    python benchmarks/vit_throughput.py --output benchmarks/results/vit_throughput_h100.md

Model rows time the experiment's own training step (`tinyimagenet.build`, its AdamW groups and
schedule, timm Mixup, SoftTargetCrossEntropy, grad clip 1.0, the EMA update) on a fixed batch
already on the device, so they measure the model and nothing else; ratios are against GELU on the
same model and precision in the same run. The pipeline row runs the experiment's DataLoader
(`tinyimagenet.train_loader`: workers over the decoded uint8 cache, every augmentation per image)
with the model removed: if it delivers more images per second than the model rows consume, the
GPU never waits for data. Its cache holds random pixels unless --data-dir has real Tiny ImageNet:
the per-image work is the same, and no accuracy is reported.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import device_name, versions  # benchmarks/ is the script folder: on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratsweep import config as cfg  # noqa: E402
from ratsweep.experiments import tinyimagenet as ti  # noqa: E402

PAPER_EPOCHS, EPOCH_IMAGES = 100, 300_000  # one Table 5 trial: 100 epochs of 100k images x 3 repeats
TARGET_RATIO, TARGET_VIT_MINUTES = 1.05, 90


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(model: str, activation: str, precision: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Images per second of the experiment's training step, and peak memory."""
    config = cfg.build(ti.TinyImageNetConfig, {"model": model, "activation": activation, "batch_size": batch, "amp": precision == "bf16"})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    network, ema = ti.build(config, device)
    optimizer = torch.optim.AdamW(ti.param_groups(network, config.lr, config.rational.lr_mult, config.weight_decay), lr=config.lr)
    mixup, loss_fn = ti.mixer(config)
    images = torch.randn(batch, 3, ti.IMAGE_SIZE, ti.IMAGE_SIZE, device=device)
    labels = torch.randint(0, ti.NUM_CLASSES, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        x, targets = mixup(images, labels)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.amp):
            logits = network(x)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.clip_grad)
        optimizer.step()
        ema.update(network)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step_time = statistics.median(times)
    return {"step_s": step_time, "img_per_s": batch / step_time, "peak_bytes": peak}


def pipeline_rate(data_dir: str | None, batch: int, batches: int, workers: int | None) -> tuple[float, int, str]:
    """(images per second, workers, data) of the training DataLoader alone."""
    with tempfile.TemporaryDirectory(prefix="tin-bench-") as tmp:
        if data_dir:
            cache, data = ti.cached_arrays(str(Path(data_dir).resolve())), "real Tiny ImageNet"
        else:
            cache, data = Path(tmp), "random pixels"
            rng = np.random.default_rng(0)
            np.save(cache / "train_images.npy", rng.integers(0, 256, (100_000, ti.IMAGE_SIZE, ti.IMAGE_SIZE, 3), dtype=np.uint8))
            np.save(cache / "train_labels.npy", rng.integers(0, ti.NUM_CLASSES, 100_000))
        config = cfg.build(ti.TinyImageNetConfig, {"batch_size": batch, "workers": workers, "steps_per_epoch": batches})
        loader = ti.train_loader(cache, config, pin_memory=torch.cuda.is_available())
        iterator = iter(loader)
        for _ in range(min(4, batches // 4)):  # workers start and fill their prefetch queues
            next(iterator)
        started, seen = time.perf_counter(), 0
        for images, _ in iterator:
            seen += len(images)
        rate = seen / (time.perf_counter() - started)
        return rate, loader.num_workers, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit", "cait", "swin"])
    parser.add_argument("--activations", nargs="+", default=["gelu", "rational"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="fp32: the paper's (TF32 matmuls); bf16: autocast (amp=true, CUDA only)")
    parser.add_argument("--batch", type=int, help="default: 128 (the paper's) on a GPU, 16 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps per row (default: 50 on a GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on a GPU, 1 on CPU)")
    parser.add_argument("--pipeline-batches", type=int, help="batches the pipeline row reads (default: 400 on a GPU, 40 on CPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: the experiment's, CPUs - 1 up to 16)")
    parser.add_argument("--data-dir", help="real Tiny ImageNet (tiny-imagenet-200) here; default: random pixels")
    parser.add_argument("--output", help="also write the results as Markdown here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (128 if cuda else 16)
    steps, warmup = args.steps or (50 if cuda else 3), args.warmup if args.warmup is not None else (10 if cuda else 1)
    precisions = args.precisions if cuda else ["fp32"]  # autocast is CUDA-only in the experiment
    rows, baseline = [], {}
    for model in args.models:
        for precision in precisions:
            for activation in sorted(args.activations, key=lambda a: a != "gelu"):  # the baseline first
                r = train_rate(model, activation, precision, batch, steps, warmup, device)
                if activation == "gelu":
                    baseline[(model, precision)] = r["step_s"]
                ratio = r["step_s"] / baseline[(model, precision)] if (model, precision) in baseline else float("nan")
                minutes = PAPER_EPOCHS * EPOCH_IMAGES / r["img_per_s"] / 60
                rows.append(f"| {model} | {activation} | {precision} | {r['step_s'] * 1e3:.1f} | {r['img_per_s']:,.0f} | {ratio:.2f}x "
                            f"| {minutes:,.0f} | {r['peak_bytes'] / 2**20:,.0f} |")
                print(rows[-1], flush=True)
    pipeline, workers, data = pipeline_rate(args.data_dir, batch, args.pipeline_batches or (400 if cuda else 40), args.workers)
    print(f"pipeline alone: {pipeline:,.0f} images/s with {workers} workers ({data})", flush=True)

    import timm

    lines = [
        "# Tiny ImageNet training throughput (ViT-S/8, CaiT-S24, Swin-T)", "",
        f"- date: {datetime.date.today()}; device: {device_name(device)}",
        f"- {versions()}, timm {timm.__version__}",
        f"- command: python benchmarks/vit_throughput.py {' '.join(sys.argv[1:])}".rstrip(),
        f"- batch {batch}, median of {steps} steps after {warmup} warm-up steps; a step: mixup, forward, loss, backward, clip, AdamW, EMA",
        "- peak memory: torch.cuda.max_memory_allocated on a GPU; the process's max RSS on CPU (cumulative over rows)",
        f"- '100 epochs (min)': {PAPER_EPOCHS} x {EPOCH_IMAGES:,} images at this rate, training only (the paper's ViT: ~600 min on its GPU)", "",
        "| model | activation | precision | ms / step | images / s | vs GELU | 100 epochs (min) | peak memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows, "",
        f"Input pipeline alone (the experiment's DataLoader, model removed): {pipeline:,.0f} images/s with {workers} workers, "
        f"batch {batch}, {data}.",
        "",
        f"Targets (GPU): rational <= {TARGET_RATIO}x GELU's step time (paper: CaiT 1.13x); a 100-epoch ViT-S/8 run <= "
        f"{TARGET_VIT_MINUTES} min on one H100 (paper ~7 h); the pipeline above the model's images/s.",
    ]
    if not cuda:
        lines += ["", "No CUDA device: these are CPU rows at a small batch; the targets, bf16 and the pipeline-vs-GPU comparison "
                  "need one. On a GPU machine: `python benchmarks/vit_throughput.py --output benchmarks/results/vit_throughput_h100.md`."]
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
