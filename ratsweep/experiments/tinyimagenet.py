"""tinyimagenet: ViT-S/8, CaiT-S24 and Swin-T from timm on Tiny ImageNet, the paper's Appendix G (Table 5).

The recipe is the authors' imagenet_test.py as SPEC section 5 reads it: timm models created at
64 px with 200 classes and drop path 0.1 (nothing else changed), every GELU swapped for the
configured activation, an epoch of 300k samples (3x repeated augmentation), per-image
RandomResizedCrop / flip / ColorJitter / RandAugment / RandomErasing, batch mixup/cutmix, AdamW with
warmup + cosine per step, grad clip 1.0, an EMA copy updated every step, fp32 (TF32) throughout.

The JPEGs are decoded once into uint8 arrays cached beside the data (ratsweep_cache/ in the
tiny-imagenet-200 folder) and memory-mapped by every trial on the machine. DataLoader workers
augment each image with its own random parameters, drawn from a seed the epoch's sampler assigns
to it, so the pipeline is reproducible whatever the worker count and a resumed run sees the same
images as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import check
from ..errors import ConfigError
from ..rational import capture_inputs
from ..registry import create_model, register_architecture, register_dataset, register_experiment
from . import library_models
from .common import (
    DataError,
    Normalize,
    Rational,
    Session,
    activation_factory,
    check_finite,
    check_seed,
    checkpoint,
    evaluate_classifier,
    evaluating,
    file_lock,
    num_params,
    plot_rational_evolution,
    plot_rationals,
    rational_field,
    rational_snapshot,
    replace_activations,
    restore,
    save_learning_curve,
    seed_everything,
)
from .library_models import ImageActivation, ImageRationalConfig, SwapConfig, is_library_model, swap_field

FAMILY = "tinyimagenet"  # the architectures `model` can name
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE = "ratsweep_cache"  # in FOLDER: the decoded images, uint8 N x 64 x 64 x 3 (.npy, memory-mapped)
CACHE_VERSION = 1
NUM_CLASSES, IMAGE_SIZE = 200, 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's
LR_BATCH = 512  # lr defaults to 2e-3 x batch_size / LR_BATCH (timm's linear scaling rule)
# The coefficients' LR multiplier is unresolved in the sources: the paper's Table 5 says these,
# its Appendix G text says 1, the authors' committed script uses 16 for all. The table's is the default.
RATIONAL_LR_MULT = {"cait": 2.0, "vit": 4.0, "swin": 8.0}
OTHER_LR_MULT = 1.0  # for architectures registered by other packages
EVAL_BATCH = 500
SMOKE_EVAL_IMAGES = 16
MAX_WORKERS = 16


@dataclass
class TinyImageNetConfig:
    model: str = "vit"  # vit | cait | swin, any registered architecture of family "tinyimagenet", or timm:NAME / torchvision:NAME
    activation: ImageActivation = "gelu"  # replaces every GELU of the model (timm:/torchvision: models: what swap.from names; native: theirs)
    rational: ImageRationalConfig = rational_field(ImageRationalConfig)  # init null: gelu (the paper's models); lr_mult null: cait 2, vit 4, swin 8 (Table 5)
    swap: SwapConfig = swap_field()  # for timm:/torchvision: models: which activation modules are replaced
    no_norm: bool = False  # every block's norm1/norm2 becomes a pass-through (the "ViT no norm" row)
    rational_no_norm: bool = False  # true: the authors' committed flag, every rational run norm-free (recorded no_norm true); false: Table 5's reading
    epochs: int = 100
    batch_size: int = 128
    lr: float | None = None  # AdamW; null: 2e-3 x batch_size / 512 (5e-4 at batch 128)
    min_lr: float = 1e-6  # where the cosine ends (the rational group's: min_lr x lr_mult)
    warmup_epochs: float = 5.0  # linear warmup per step, lr x (step + 1) / warmup steps
    weight_decay: float = 0.05  # not on 1-d parameters, biases, norms or rational coefficients
    clip_grad: float = 1.0  # global gradient norm over all parameters
    ema_decay: float = 0.999  # timm ModelEmaV3, updated every step, no warmup
    repeats: int = 3  # repeated augmentation: an epoch shows every image this many times
    steps_per_epoch: int | None = None  # null: the whole repeated epoch, images x repeats // batch_size
    drop_path: float = 0.1  # timm's stochastic depth rate (its own per-block schedule)
    crop_scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop(64, bicubic) area range
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # and aspect ratio range
    hflip: float = 0.5  # horizontal flip probability
    color_jitter: float = 0.4  # ColorJitter brightness, contrast and saturation, applied to every image
    hue: float = 0.1  # ColorJitter hue
    randaugment_ops: int = 2  # torchvision RandAugment: ops per image
    randaugment_magnitude: int = 9  # and their magnitude (of 31 bins)
    erase_prob: float = 0.25  # RandomErasing with random values, after normalization
    mixup: float = 0.8  # timm Mixup: mixup alpha
    cutmix: float = 1.0  # cutmix alpha
    mixup_prob: float = 1.0  # chance a batch is mixed at all
    mixup_switch_prob: float = 0.5  # chance of cutmix instead of mixup
    label_smoothing: float = 0.1
    tf32: bool = True  # TF32 matmuls and convolutions in fp32, as the authors ran it
    amp: bool = False  # bf16 autocast on CUDA, a speed option; the paper ran fp32
    workers: int | None = None  # DataLoader workers; null: the CPUs this process may use minus one, at most 16
    seed: int = 1

    def __post_init__(self):
        check_seed(self.seed)
        library_models.check_config(self.model, FAMILY, self.activation, self.rational, paper_init="gelu")
        self.rational.default_lr_mult(RATIONAL_LR_MULT.get(self.model, OTHER_LR_MULT))
        self.no_norm |= self.rational_no_norm and self.activation == "rational"
        if self.lr is None:
            self.lr = 2e-3 * self.batch_size / LR_BATCH
        check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        check(self.batch_size >= 2 and self.batch_size % 2 == 0, "batch_size", "an even integer >= 2 (mixup pairs images)", self.batch_size)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
        check(0 <= self.min_lr <= self.lr, "min_lr", f"a number from 0 to lr ({self.lr:g})", self.min_lr)
        check(self.warmup_epochs >= 0, "warmup_epochs", "a number >= 0", self.warmup_epochs)
        check(0 <= self.ema_decay < 1, "ema_decay", "a number in [0, 1)", self.ema_decay)
        check(self.repeats >= 1, "repeats", "an integer >= 1", self.repeats)
        check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch", "an integer >= 1 or null", self.steps_per_epoch)
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", "[low, high] with 0 < low <= high <= 1", list(self.crop_scale))
        check(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", "[low, high] with 0 < low <= high", list(self.crop_ratio))
        for key in ("hflip", "erase_prob", "mixup_prob", "mixup_switch_prob", "label_smoothing", "drop_path"):
            check(0 <= getattr(self, key) <= 1, key, "a number from 0 to 1", getattr(self, key))
        check(0 <= self.hue <= 0.5, "hue", "a number from 0 to 0.5", self.hue)
        check(0 <= self.randaugment_magnitude <= 30, "randaugment_magnitude", "an integer from 0 to 30", self.randaugment_magnitude)
        check(self.workers is None or self.workers >= 0, "workers", "an integer >= 0 or null", self.workers)


# ---- models -----------------------------------------------------------------------------------


def timm_version() -> str:
    import timm  # noqa: PLC0415

    return timm.__version__


def timm_model(timm_name: str, gelus: int, activation, num_classes: int = NUM_CLASSES, img_size: int = IMAGE_SIZE,
               drop_path_rate: float = 0.1) -> nn.Module:
    """timm's model as the authors created it (only these four arguments changed), then every exact
    nn.GELU replaced by its own `activation()` (Swin ignores timm's act_layer, so the swap is after
    creation for all). `gelus`: how many there are; another count means timm changed the model."""
    import timm  # noqa: PLC0415  (timm loads in seconds; listing experiments must not)

    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path_rate)
    swapped = replace_activations(model, activation, types=(nn.GELU,))
    if swapped != gelus:
        raise RuntimeError(f"{timm_name}: expected {gelus} GELU modules to replace, found {swapped} (timm {timm.__version__})")
    return model


@register_architecture("vit", family=FAMILY)
def vit(activation, **kwargs) -> nn.Module:
    """timm vit_small_patch8_224 at 64 px: 64 patches of 8 x 8, 12 blocks; 21.5M parameters with 200 classes."""
    return timm_model("vit_small_patch8_224", 12, activation, **kwargs)


@register_architecture("cait", family=FAMILY)
def cait(activation, **kwargs) -> nn.Module:
    """timm cait_s24_224 at 64 px: 16 patches of 16 x 16, 24 + 2 class-attention blocks; 46.5M parameters."""
    return timm_model("cait_s24_224", 26, activation, **kwargs)


@register_architecture("swin", family=FAMILY)
def swin(activation, **kwargs) -> nn.Module:
    """timm swin_tiny_patch4_window7_224 at 64 px: 16 x 16 patches of 4 x 4, window 7; 27.7M parameters."""
    return timm_model("swin_tiny_patch4_window7_224", 12, activation, **kwargs)


def remove_block_norms(model: nn.Module) -> int:
    """Make every block's norm1 and norm2 a pass-through (the norm-free ViT); returns how many blocks."""
    blocks = [m for m in model.modules() if isinstance(getattr(m, "norm1", None), nn.Module) and isinstance(getattr(m, "norm2", None), nn.Module)]
    for block in blocks:
        block.norm1, block.norm2 = nn.Identity(), nn.Identity()
    return len(blocks)


def param_groups(model: nn.Module, lr: float, lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups as the authors' script made them: weight decay on every parameter except those
    with ndim <= 1, names ending ".bias" or containing "norm" or "bn" (so pos_embed, cls_token and
    Swin's relative_position_bias_table are decayed); every Rational's coefficients in their own
    group, lr x lr_mult and no decay."""
    rational = {id(p) for m in model.modules() if isinstance(m, Rational) for p in m.parameters()}
    groups: dict[str, list] = {"rational": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in rational:
            groups["rational"].append(param)
        elif param.ndim <= 1 or name.endswith(".bias") or "norm" in name or "bn" in name:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    settings = {"rational": (lr * lr_mult, 0.0), "decay": (lr, weight_decay), "no_decay": (lr, 0.0)}
    return [{"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
            for name, params in groups.items() if params]


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """The schedule as a multiple of each group's base rate: (step + 1) / warmup_steps during the
    warmup, then a cosine from 1 to `floor` (min_lr / lr) at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- data -------------------------------------------------------------------------------------


def _get_it(data_dir: Path) -> str:
    return f"get it with: ratsweep data tinyimagenet --dir {data_dir}"


def read_wnids(folder: Path) -> list[str]:
    try:
        wnids = (folder / "wnids.txt").read_text().split()
    except OSError:
        wnids = []
    if len(wnids) != NUM_CLASSES or len(set(wnids)) != NUM_CLASSES:
        raise DataError(f"tinyimagenet: {folder / 'wnids.txt'} must list {NUM_CLASSES} distinct class ids, "
                        f"found {len(set(wnids))}; {_get_it(folder.parent)}")
    return wnids


def verify(data_dir: Path) -> None:
    """DIR/tiny-imagenet-200 has the Stanford layout: wnids.txt, train/<wnid>/images/ for every
    class, val/images/ and val/val_annotations.txt (the images themselves are checked when decoded)."""
    folder = Path(data_dir) / FOLDER
    if not folder.is_dir():
        raise DataError(f"tinyimagenet: {folder} does not exist; {_get_it(data_dir)}")
    wnids = read_wnids(folder)
    missing = [f"train/{w}/images" for w in wnids if not (folder / "train" / w / "images").is_dir()]
    missing += [p for p in ("val/images", "val/val_annotations.txt") if not (folder / p).exists()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"tinyimagenet: {folder} lacks {', '.join(missing[:3])}{more}; {_get_it(data_dir)}")


def download(data_dir: Path) -> None:
    """Tiny ImageNet (237 MB from Stanford CS231n) into DIR/tiny-imagenet-200, decoded once into a uint8 cache.

    The cache (tiny-imagenet-200/ratsweep_cache/) is what every trial on the machine reads."""
    from torchvision.datasets.utils import download_and_extract_archive  # noqa: PLC0415

    download_and_extract_archive(URL, download_root=str(data_dir))
    cached_arrays(str(Path(data_dir).resolve()))


def listing(folder: Path, wnids: list[str]) -> dict[str, tuple[list[Path], list[int]]]:
    """{"train": (files, labels), "val": (files, labels)}; labels index wnids.txt's order."""
    label = {w: i for i, w in enumerate(wnids)}
    train = [(path, label[w]) for w in wnids for path in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    val = []
    for number, line in enumerate((folder / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"tinyimagenet: {folder / 'val' / 'val_annotations.txt'} line {number} is not "
                            f"'<file>\\t<wnid from wnids.txt>\\t...'; {_get_it(folder.parent)}")
        val.append((folder / "val" / "images" / fields[0], label[fields[1]]))
    return {split: ([p for p, _ in pairs], [y for _, y in pairs]) for split, pairs in (("train", train), ("val", val))}


def decode(path: Path, data_dir: Path) -> np.ndarray:
    """One image as uint8 64 x 64 x 3: RGB (some Tiny ImageNet JPEGs are grayscale), bicubic-resized
    to 64 x 64 if it is not (the authors' evaluation Resize((64, 64)); Tiny ImageNet's are all 64)."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"tinyimagenet: cannot decode {path} ({e}); {_get_it(data_dir)}") from None


def build_cache(folder: Path, target: Path) -> None:
    """Decode every JPEG (threads: PIL releases the GIL) into target/{split}_{images,labels}.npy
    and a manifest naming the source counts; written to a temporary folder, then renamed."""
    files = listing(folder, read_wnids(folder))
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for split, (paths, labels) in files.items():
            if not paths:
                raise DataError(f"tinyimagenet: no {split} images in {folder}; {_get_it(folder.parent)}")
            images = np.lib.format.open_memmap(temporary / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(paths), IMAGE_SIZE, IMAGE_SIZE, 3))
            for i, image in enumerate(pool.map(partial(decode, data_dir=folder.parent), paths, chunksize=256)):
                images[i] = image
            images.flush()
            del images
            np.save(temporary / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    manifest = {"version": CACHE_VERSION, **{split: len(paths) for split, (paths, _) in files.items()}}
    (temporary / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(temporary, target)


def cache_is_current(folder: Path, target: Path) -> bool:
    """The cache exists, has this format, and holds as many images as the folder has files."""
    try:
        manifest = json.loads((target / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    train = sum(1 for w in read_wnids(folder) for _ in os.scandir(folder / "train" / w / "images"))
    val = len((folder / "val" / "val_annotations.txt").read_text().splitlines())
    return manifest == {"version": CACHE_VERSION, "train": train, "val": val}


@lru_cache(maxsize=1)  # trials that reuse a worker process check the cache once
def cached_arrays(data_dir: str) -> Path:
    """The folder of decoded arrays, built on first use (one trial at a time per machine: a lock)."""
    verify(Path(data_dir))
    folder = Path(data_dir) / FOLDER
    target = folder / CACHE
    with file_lock(target):
        if not cache_is_current(folder, target):
            build_cache(folder, target)
    return target


class AugmentedImages(torch.utils.data.Dataset):
    """The cached training images, each drawn through `transform` with its own seed.

    Keys are (image index, seed) pairs from RepeatedAugmentationBatches; torchvision's ops draw
    from torch's global RNG, seeded per image inside fork_rng so the caller's RNG is untouched. The
    array is memory-mapped lazily, in whichever process reads it first (workers share the pages)."""

    def __init__(self, images_path: Path, labels: np.ndarray, transform):
        self.images_path, self.labels, self.transform = images_path, labels, transform
        self.images = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image  # noqa: PLC0415

        index, seed = key
        if self.images is None:
            self.images = np.load(self.images_path, mmap_mode="r")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class RepeatedAugmentationBatches(torch.utils.data.Sampler):
    """An epoch's batches of (index, augmentation seed), as the authors' RepeatAugSampler: from a
    generator seeded with seed + epoch, shuffle the indices, repeat each `repeats` times in place,
    shuffle again, drop the last partial batch. `steps` caps the batches (None: all of them)."""

    def __init__(self, n: int, repeats: int, batch_size: int, seed: int, steps: int | None = None):
        self.n, self.repeats, self.batch_size, self.seed = n, repeats, batch_size, seed
        self.steps = min(steps or math.inf, n * repeats // batch_size)
        if self.steps < 1:
            raise DataError(f"tinyimagenet: {n} training images x {repeats} repeats make no batch of {batch_size}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator).repeat_interleave(self.repeats)
        order = order[torch.randperm(len(order), generator=generator)]
        seeds = torch.randint(2**62, (len(order),), generator=generator)
        for step in range(self.steps):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield list(zip(order[batch].tolist(), seeds[batch].tolist()))


def train_transform(config: TinyImageNetConfig):
    """SPEC's training augmentation of one PIL image, in the authors' order: RandomResizedCrop,
    flip, ColorJitter, RandAugment, to a float tensor, ImageNet normalize, RandomErasing."""
    from torchvision.transforms import v2  # noqa: PLC0415

    bicubic = v2.InterpolationMode.BICUBIC
    return v2.Compose([
        v2.RandomResizedCrop(IMAGE_SIZE, scale=config.crop_scale, ratio=config.crop_ratio, interpolation=bicubic),
        v2.RandomHorizontalFlip(config.hflip),
        v2.ColorJitter(config.color_jitter, config.color_jitter, config.color_jitter, config.hue),
        v2.RandAugment(num_ops=config.randaugment_ops, magnitude=config.randaugment_magnitude),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
        v2.RandomErasing(p=config.erase_prob, scale=(0.02, 0.33), ratio=(0.3, 3.3), value="random"),
    ])  # fmt: skip


def default_workers() -> int:
    return max(0, min(MAX_WORKERS, len(os.sched_getaffinity(0)) - 1))


def train_loader(cache: Path, config: TinyImageNetConfig, pin_memory: bool) -> torch.utils.data.DataLoader:
    """Batches of augmented training images (float32, normalized) and labels from the cache."""
    dataset = AugmentedImages(cache / "train_images.npy", np.load(cache / "train_labels.npy"), train_transform(config))
    batches = RepeatedAugmentationBatches(len(dataset), config.repeats, config.batch_size, config.seed, config.steps_per_epoch)
    workers = default_workers() if config.workers is None else config.workers
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None, generator=torch.Generator(),  # not the global RNG: resume draws alike
    )


def mixer(config: TinyImageNetConfig):
    """timm's Mixup in batch mode (one draw per batch, from numpy's global RNG) and its soft-target loss."""
    from timm.data import Mixup  # noqa: PLC0415
    from timm.loss import SoftTargetCrossEntropy  # noqa: PLC0415

    mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob, switch_prob=config.mixup_switch_prob,
                  mode="batch", label_smoothing=config.label_smoothing, num_classes=NUM_CLASSES)
    return mixup, SoftTargetCrossEntropy()


# ---- the experiment ---------------------------------------------------------------------------


def build(config: TinyImageNetConfig, device: torch.device) -> tuple[nn.Module, nn.Module, dict[str, int | str]]:
    """(model, EMA, params to log: library versions, swap counts) as the authors made them: the swapped model, its norms
    removed when no_norm, then the EMA as a copy of it (timm ModelEmaV3, no warmup). A timm:/
    torchvision: model is built the same way (64 px and drop path where its builder takes them)."""
    from timm.utils import ModelEmaV3  # noqa: PLC0415

    params = {"timm_version": timm_version()}
    if is_library_model(config.model):
        model = library_models.build(config.model, NUM_CLASSES, img_size=IMAGE_SIZE, image_size=IMAGE_SIZE,
                                     drop_path_rate=config.drop_path)
        params |= library_models.version(config.model)
        if config.activation != "native":
            params |= library_models.swap(model, config.model, config.activation, config.rational, config.swap,
                                          sample=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    else:
        model = create_model(config.model, activation_factory(config.activation, config.rational), num_classes=NUM_CLASSES,
                             img_size=IMAGE_SIZE, drop_path_rate=config.drop_path)
    if config.no_norm and not remove_block_norms(model):
        raise ConfigError("no_norm", f"model {config.model!r} has no blocks with norm1/norm2 to remove")
    model.to(device)
    return model, ModelEmaV3(model, decay=config.ema_decay), params


@register_experiment("tinyimagenet", config=TinyImageNetConfig, datasets=("tinyimagenet",),
                     metrics={"train_loss": "min", "val_loss": "min", "val_top1": "max", "ema_top1": "max", "best_ema_top1": "max",
                              "epoch_time_s": "min", "img_per_s": "max", "elapsed_min": "min", "median_epoch_min": "min"},
                     smoke={"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "workers": 1}, family=FAMILY)
def run(config: TinyImageNetConfig, session: Session) -> dict[str, float]:
    """ViT-S/8, CaiT-S24 or Swin-T on Tiny ImageNet with the authors' recipe (Appendix G)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.tf32
    torch.backends.cudnn.benchmark = True
    cache = cached_arrays(str(Path(session.data_dir).resolve()))
    # N x C x H x W on the device, already 64 x 64: the authors' Resize((64, 64)) happened when they were decoded
    val_images = torch.from_numpy(np.load(cache / "val_images.npy")).permute(0, 3, 1, 2)
    val_labels = torch.from_numpy(np.load(cache / "val_labels.npy"))
    if session.smoke:
        val_images, val_labels = val_images[:SMOKE_EVAL_IMAGES], val_labels[:SMOKE_EVAL_IMAGES]
    val_images, val_labels = val_images.to(device).contiguous(), val_labels.to(device)
    normalize = Normalize(MEAN, STD, device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.amp)

    generator = seed_everything(config.seed)
    model, ema, params = build(config, device)
    session.log_params(num_params=num_params(model), **params)
    loader = train_loader(cache, config, pin_memory=cuda)
    steps_per_epoch = len(loader.batch_sampler)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(model, config.lr, config.rational.lr_mult, config.weight_decay),
                                  lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    floor = config.min_lr / config.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, floor))
    mixup, soft_cross_entropy = mixer(config)
    parts = {"model": model, "ema": ema, "optimizer": optimizer, "schedule": schedule}

    # curve: every epoch's metrics; shapes: rational coefficients at a few epochs for the evolution plot
    snapshot_epochs = {5, config.epochs // 2, config.epochs}
    start, best_ema_top1, elapsed, curve, shapes = 0, 0.0, 0.0, [], {0: rational_snapshot(model)}
    if session.restored is not None:
        state = restore(session.restored, parts, generator)
        start, best_ema_top1, elapsed = state["epoch"], state["best_ema_top1"], state["elapsed"]
        curve, shapes = list(state["curve"]), dict(state["shapes"])

    for epoch in range(start + 1, config.epochs + 1):
        started = time.perf_counter()
        loader.batch_sampler.set_epoch(epoch - 1)  # seeds seed + 0, 1, ... as the authors' sampler
        loss_sum, steps, seen = torch.zeros((), device=device), 0, 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            images, targets = mixup(images, labels)
            with autocast():
                logits = model(images)
            loss = soft_cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            schedule.step()
            ema.update(model)
            loss_sum += loss.detach()  # no host sync per step
            steps, seen = steps + 1, seen + len(labels)
        train_loss = loss_sum.item() / steps
        train_time = time.perf_counter() - started
        check_finite(train_loss, f"epoch {epoch}")
        val_loss, val_top1 = evaluate_classifier(model, normalize, val_images, val_labels, autocast, EVAL_BATCH)
        _, ema_top1 = evaluate_classifier(ema.module, normalize, val_images, val_labels, autocast, EVAL_BATCH)
        best_ema_top1 = max(best_ema_top1, ema_top1)
        epoch_time = time.perf_counter() - started  # the authors' time: training plus both evaluations
        elapsed += epoch_time
        metrics = {
            "epoch": epoch,  # the MLflow step of this report (sweep.names.STEP_KEYS)
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_top1": val_top1,
            "ema_top1": ema_top1,
            "best_ema_top1": best_ema_top1,
            "epoch_time_s": epoch_time,
            "img_per_s": seen / train_time,
            "elapsed_min": elapsed / 60,  # Table 5's time: the total of epoch times
            "median_epoch_min": statistics.median([*(m["epoch_time_s"] for m in curve), epoch_time]) / 60,
        }
        curve.append(metrics)
        if epoch in snapshot_epochs:
            shapes[epoch] = rational_snapshot(model)
        if epoch == config.epochs:  # artifacts go out with the final report
            save_learning_curve(curve, session, panels=(("train_loss", "train loss", "log"), ("ema_top1", "EMA val top-1", "linear")))
            with evaluating(model), capture_inputs(model) as rational_inputs, autocast():
                model(normalize(val_images[:EVAL_BATCH // 4]))
            plot_rationals(model, session.artifact_dir, inputs=rational_inputs)
            plot_rational_evolution(model, shapes, rational_inputs, session.artifact_dir / "rational_evolution.png")
        session.report(metrics, state=checkpoint(parts, generator, epoch=epoch, best_ema_top1=best_ema_top1, elapsed=elapsed,
                                                 curve=curve, shapes=shapes))
    return curve[-1]


register_dataset("tinyimagenet", download=download, verify=verify)
