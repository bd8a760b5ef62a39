"""Small synthetic datasets written in the real on-disk formats (no downloads in tests).

Never a source of results: the images are class-coloured noise, only there to drive the real
loading code and training loops end to end.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar10(root: Path, train_per_batch: int = 200, test: int = 200, seed: int = 0) -> Path:
    """root/cifar-10-batches-py as torchvision's CIFAR10 reads it: data_batch_1..5, test_batch
    (pickled dicts: data N x 3072 uint8 rows in channel-major order, labels list of int), batches.meta."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3, 1, 1))
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> None:
        labels = rng.integers(0, 10, size=n)
        images = np.clip(colours[labels] + rng.normal(0, 40, size=(n, 3, 32, 32)), 0, 255).astype(np.uint8)
        content = {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(n, 3072),
                   "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)

    for i in range(1, 6):
        batch(f"data_batch_{i}", train_per_batch)
    batch("test_batch", test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR_CLASSES), "num_cases_per_batch": train_per_batch, "num_vis": 3072}, f, protocol=2)
    return Path(root)


MINARI_ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}


def write_minari(root: Path, tasks=tuple(MINARI_ENVS), episodes: int = 4, steps: int = 60, seed: int = 0) -> Path:
    """mujoco/{task}/{medium,expert}-v0 under root (a MINARI_DATASETS_PATH), recorded from the real
    v5 envs with minari.DataCollector: random actions, episodes cut at `steps` (HalfCheetah's end
    truncated, Hopper's and Walker2d's mostly terminated), "expert" episodes twice as long."""
    import os

    import gymnasium as gym
    import minari

    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        for task in tasks:
            for quality, length in (("medium", steps), ("expert", 2 * steps)):
                env = minari.DataCollector(gym.make(MINARI_ENVS[task], max_episode_steps=length))
                env.action_space.seed(seed)
                for episode in range(episodes):
                    env.reset(seed=seed + episode)
                    while True:
                        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                        if terminated or truncated:
                            break
                env.create_dataset(dataset_id=f"mujoco/{task}/{quality}-v0", algorithm_name="random (synthetic test data)",
                                   eval_env=MINARI_ENVS[task])
                env.close()
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return Path(root)


def write_tinyimagenet(root: Path, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0, grayscale_every: int = 7) -> Path:
    """root/tiny-imagenet-200 in the Stanford layout: wnids.txt (200 ids), words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG with train/<wnid>/<wnid>_boxes.txt, val/images/val_<i>.JPEG
    with val/val_annotations.txt (file, wnid, box), test/images/. 64 x 64 JPEGs of class-coloured
    noise; every `grayscale_every`-th one is grayscale, as some of the real ones are."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{10_000_000 + 7919 * i:08d}" for i in range(200)]
    colours = rng.integers(40, 216, size=(200, 1, 1, 3))
    count = 0

    def jpeg(path: Path, label: int) -> None:
        nonlocal count
        pixels = np.clip(colours[label] + rng.normal(0, 40, size=(64, 64, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        count += 1
        (image.convert("L") if count % grayscale_every == 0 else image).save(path, "JPEG", quality=90)

    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for i in range(train_per_class):
            jpeg(images / f"{wnid}_{i}.JPEG", label)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (folder / "val" / "images").mkdir(parents=True)
    annotations = []
    for i in range(200 * val_per_class):
        label = i % 200
        jpeg(folder / "val" / "images" / f"val_{i}.JPEG", label)
        annotations.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    (folder / "test" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tsynthetic class {i}\n" for i, w in enumerate(wnids)))
    return Path(root)
