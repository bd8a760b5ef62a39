"""cifar10: VGG4 / VGG8 on CIFAR-10, the paper's Appendix E (Tables 1 and 2).

Two recipes: `baseline` (no augmentation, no regularization, constant learning rate) and
`augmented` (crop + flip, label smoothing, mixup, dropout, weight decay on weights, step schedule),
each with GroupNorm and LSUV toggles. The images are decoded once into a uint8 tensor on the
training device; every batch is gathered, cropped, flipped, normalized and mixed there as whole-batch
tensor ops, so the GPU never waits on a DataLoader (the airbench approach).
"""

from __future__ import annotations

import math
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..rational import capture_inputs
from ..registry import create_model, register_architecture, register_dataset, register_experiment
from . import library_models
from .common import (
    FIXED_ACTIVATIONS,
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
    num_params,
    plot_rational_evolution,
    plot_rationals,
    rational_field,
    rational_param_groups,
    rational_snapshot,
    restore,
    save_learning_curve,
    seed_everything,
)
from .library_models import ImageActivation, ImageRationalConfig, SwapConfig, is_library_model, swap_field

FOLDER = "cifar-10-batches-py"  # torchvision's on-disk format: pickled batches of 10,000 images
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 512, 256
EVAL_BATCH = 1000
FAMILY = "cifar"  # the architectures `model` can name
GROUPS = 16  # GroupNorm's target group count, reduced until it divides the channels
LSUV_IMAGES = 64  # the first images of the first (augmented) training batch
# The authors' script built these in place. Numerically the same in training, but their LSUV hooks
# then saw the post-activation tensor as the conv's output (see lsuv), so cifar10 builds them alike.
INPLACE_ACTIVATIONS = ("leaky_relu", "silu")
ACTIVATION_MODULES = (*FIXED_ACTIVATIONS.values(), Rational)  # what LSUV measures after a layer


@dataclass(frozen=True)
class Recipe:
    augment: bool  # random crop (zero padding 4) and horizontal flip
    label_smoothing: float
    mixup_alpha: float  # 0: no mixup
    dropout: float  # before the classifier
    weight_decay: float  # on Conv/Linear weights only (biases, norms, rational coefficients: 0)
    milestones: tuple[float, ...]  # fractions of the epochs where the learning rate drops by LR_DECAY
    rational_lr_mult: float  # rational.lr_mult unless the config sets it


LR_DECAY = 0.1
MOMENTUM = 0.9
RECIPES = {
    "baseline": Recipe(augment=False, label_smoothing=0.0, mixup_alpha=0.0, dropout=0.0, weight_decay=0.0,
                       milestones=(), rational_lr_mult=1.0),
    # milestones 0.5, 0.75 of 60 epochs: the paper's steps at epochs 30 and 45
    "augmented": Recipe(augment=True, label_smoothing=0.1, mixup_alpha=0.2, dropout=0.3, weight_decay=5e-4,
                        milestones=(0.5, 0.75), rational_lr_mult=0.5),
}


@dataclass
class Cifar10Config:
    model: str = "vgg4"  # vgg4 | vgg8, any registered architecture of family "cifar", or timm:NAME / torchvision:NAME
    recipe: Literal["baseline", "augmented"] = "baseline"  # the paper's two training pipelines (RECIPES)
    activation: ImageActivation = "relu"  # after every conv (VGG); for timm:/torchvision: models what replaces swap.from, native: theirs
    rational: ImageRationalConfig = rational_field(ImageRationalConfig)  # degrees/version/init/lr_mult, when activation is rational; init null: leaky_relu (VGG)
    swap: SwapConfig = swap_field()  # for timm:/torchvision: models: which activation modules are replaced
    lsuv: bool = False  # LSUV init as the authors ran it (see lsuv) instead of PyTorch's default
    norm: Literal["none", "group"] = "none"  # GroupNorm after each conv, before the activation
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.02  # SGD, Nesterov momentum 0.9
    seed: int = 0
    amp: bool = False  # bf16 autocast on CUDA, a speed option; the paper ran fp32 (CPU runs stay fp32)
    compile: bool = False  # torch.compile the model (whole graph, rationals inside): a speed option; compile_s reports its first step

    def __post_init__(self):
        check_seed(self.seed)
        self.rational.default_lr_mult(RECIPES[self.recipe].rational_lr_mult)
        library_models.check_config(self.model, FAMILY, self.activation, self.rational, paper_init="leaky_relu")
        check(self.norm == "none" or not is_library_model(self.model), "norm",
              "none for a timm:/torchvision: model (it keeps its own norms; group applies to VGG)", self.norm)
        check(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        check(self.batch_size >= 2, "batch_size", "an integer >= 2", self.batch_size)
        check(self.lr > 0, "lr", "a number > 0", self.lr)


# ---- models -----------------------------------------------------------------------------------


def cifar_activation(config: Cifar10Config) -> Callable[[], nn.Module]:
    """The activation constructor, with LeakyReLU and SiLU in place as the authors built them."""
    if config.activation in INPLACE_ACTIVATIONS:
        return partial(FIXED_ACTIVATIONS[config.activation], inplace=True)
    return activation_factory(config.activation, config.rational)


def build_model(config: Cifar10Config, dropout: float) -> tuple[nn.Module, dict[str, int]]:
    """(the model, params to log): a registered architecture built with the configured activation,
    or a timm:/torchvision: model for 32 px images with its activations swapped (params: the
    library's version and the swap counts)."""
    if not is_library_model(config.model):
        return create_model(config.model, cifar_activation(config), num_classes=NUM_CLASSES, norm=config.norm, dropout=dropout), {}
    # classifier dropout where the builder takes it: timm's drop_rate, torchvision's dropout
    model = library_models.build(config.model, NUM_CLASSES, img_size=32, image_size=32, drop_rate=dropout, dropout=dropout)
    params = library_models.version(config.model)
    if config.activation != "native":
        params |= library_models.swap(model, config.model, config.activation, config.rational, config.swap,
                                      sample=torch.randn(2, 3, 32, 32))
    return model, params


def group_count(channels: int, target: int = GROUPS) -> int:
    """`target` groups, reduced until they divide `channels`."""
    groups = min(target, channels)
    while channels % groups:
        groups -= 1
    return groups


def vgg(blocks: tuple[tuple[int, int], ...], activation: Callable[[], nn.Module], num_classes: int = NUM_CLASSES,
        norm: str = "none", dropout: float = 0.0) -> nn.Sequential:
    """VGG for 32x32 inputs: per block (convs, width) 3x3 convs with bias, each followed by
    [GroupNorm] and the activation, then 2x2 max-pooling; dropout, then one Linear classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for convs, width in blocks:
        for _ in range(convs):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if norm == "group":
                layers.append(nn.GroupNorm(group_count(width), width))
            layers.append(activation())
            channels = width
        layers.append(nn.MaxPool2d(2))
    side = 32 >> len(blocks)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers),
        flatten=nn.Flatten(),
        dropout=nn.Dropout(dropout),
        classifier=nn.Linear(channels * side * side, num_classes),
    ))  # fmt: skip


@register_architecture("vgg4", family=FAMILY)
def vgg4(activation: Callable[[], nn.Module], **kwargs) -> nn.Module:
    """VGG4: conv 64 | conv 128 | 2 x conv 256, Linear(4096, 10); 1,001,866 parameters."""
    return vgg(((1, 64), (1, 128), (2, 256)), activation, **kwargs)


@register_architecture("vgg8", family=FAMILY)
def vgg8(activation: Callable[[], nn.Module], **kwargs) -> nn.Module:
    """VGG8: 2 x conv 64 | 2 x 128 | 2 x 256 | 2 x 512, Linear(2048, 10); 4,705,866 parameters."""
    return vgg(((2, 64), (2, 128), (2, 256), (2, 512)), activation, **kwargs)


def recorded(model: nn.Module, images: torch.Tensor, modules: list[nn.Module]) -> dict[nn.Module, torch.Tensor]:
    """Each module's output when `model` runs on `images`, in execution order, as its forward hook
    saw it: the tensor itself, not a copy, so an in-place activation after a conv overwrites the
    conv's recorded output, as it did in the authors' hooks."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda module, args, out: outputs.__setitem__(module, out)) for m in modules]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def lsuv(model: nn.Module, images: torch.Tensor, activations: tuple[type[nn.Module], ...] = ACTIVATION_MODULES,
         target_var: float = 0.125, tol: float = 0.1, max_rounds: int = 10) -> list[int]:
    """Layer-sequential unit-variance init as the authors' `lsuv_init` ran it (SPEC section 3; the
    paper itself only names the toggle). Eval mode, fp32, no orthogonal pre-init. One recorded forward
    gives the execution order of the Conv/Linear and activation modules; then for each Conv/Linear in
    that order, up to `max_rounds` rounds of: a fresh forward; w_out = the layer's output, t = the
    output of the next activation module (the Rational included) whose output has w_out's shape (w_out
    itself if none, as for the classifier); if the layer has a bias and |mean(w_out)| > 1e-3, subtract
    that mean from the bias (every round, before the test); stop if var(t) (population) is not finite,
    <= 0, or within `tol` of `target_var` relatively; else scale the weight by sqrt(target / (var + 1e-6)).

    With GroupNorm between conv and activation, t does not depend on the conv weight's scale, so the
    test never passes: all rounds run and the conv weights shrink to about 1 % of their default norm.
    That is what the paper's GN + LSUV cells were trained from, so it is kept, not fixed. In-place
    activations (the authors' LeakyReLU and SiLU, see INPLACE_ACTIVATIONS) overwrite the recorded conv
    output, so without GroupNorm their mean is the post-activation one, again as in the authors' runs.

    `activations`: the module classes that count as activations.

    Returns how many times each layer's weight was rescaled."""
    kinds = (nn.Conv2d, nn.Linear, *activations)
    rescaled = []
    with evaluating(model):
        order = list(recorded(model, images, [m for m in model.modules() if isinstance(m, kinds)]))
        for position, layer in enumerate(order):
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            following = [m for m in order[position + 1:] if isinstance(m, activations)]
            count = 0
            for _ in range(max_rounds):
                outputs = recorded(model, images, [layer, *following])
                w_out = outputs[layer]
                t = next((outputs[m] for m in following if outputs[m].shape == w_out.shape), w_out)
                var, mean = t.float().var(unbiased=False).item(), w_out.float().mean().item()
                if layer.bias is not None and abs(mean) > 1e-3:
                    layer.bias.sub_(mean)
                if not math.isfinite(var) or var <= 0 or abs(var - target_var) / target_var <= tol:
                    break
                layer.weight.mul_(math.sqrt(target_var / (var + 1e-6)))
                count += 1
            rescaled.append(count)
    return rescaled


# ---- data -------------------------------------------------------------------------------------


def verify(data_dir: Path) -> None:
    """Every batch file is there (their contents are checked when read)."""
    folder = Path(data_dir) / FOLDER
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise DataError(f"cifar10: {folder} lacks {', '.join(missing)}; get it with: ratsweep data cifar10 --dir {data_dir}")


def download(data_dir: Path) -> None:
    """CIFAR-10 (170 MB) into DIR/cifar-10-batches-py, through torchvision."""
    from torchvision.datasets import CIFAR10  # noqa: PLC0415

    CIFAR10(str(data_dir), train=True, download=True)  # one archive holds train and test


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 3 x 32 x 32, labels int64 N) from one pickled batch, or DataError."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001  (any decoding failure means the same thing: a bad file)
        raise DataError(f"cifar10: {path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"download it again with: ratsweep data cifar10 --dir {path.parent.parent}") from None
    if len(images) != len(labels) or labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"cifar10: {path} has {len(images)} images and {len(labels)} labels (expected equal "
                        f"counts, labels 0-9); download it again with: ratsweep data cifar10 --dir {path.parent.parent}")
    return images, labels


@lru_cache(maxsize=1)  # trials that reuse a worker process decode the files once
def load(data_dir: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, labels), (test images, labels)): uint8 N x 3 x 32 x 32 and int64, on the CPU."""
    verify(Path(data_dir))
    folder = Path(data_dir) / FOLDER

    def read(names):
        parts = [read_batch(folder / name) for name in names]
        return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts]))

    return read(TRAIN_FILES), read((TEST_FILE,))


def random_crop(images: torch.Tensor, offsets: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Each image of (B, C, H, W) zero-padded by `padding` and cropped back to H x W at its (row,
    column) offset from `offsets` (B x 2, values 0..2 * padding): one gather for the whole batch."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # B x H
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # B x W
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images where `mask` (B, bool) is set."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)


def train_images(images: torch.Tensor, batch: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, augment: bool,
                 normalize: Normalize, memory_format: torch.memory_format) -> torch.Tensor:
    """The training batch `batch` (indices) as the model sees it: cropped and flipped at the epoch
    plan's draws when the recipe augments, normalized."""
    x = images[batch]
    if augment:
        x = flip(random_crop(x, offsets[batch]), flips[batch])
    return normalize(x).contiguous(memory_format=memory_format)


def epoch_plan(n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An epoch's random choices, drawn at once from the data RNG (so a resumed run draws the
    same): image order, crop offsets, flip mask; moved to the device in one go each."""
    order = torch.randperm(n, generator=generator)
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return order.to(device), offsets.to(device), flips.to(device)


# ---- the experiment ---------------------------------------------------------------------------


@register_experiment("cifar10", config=Cifar10Config, datasets=("cifar10",),
                     metrics={"train_loss": "min", "test_loss": "min", "test_acc": "max", "best_test_acc": "max", "epoch_time_s": "min",
                              "compile_s": "min"}, smoke={"epochs": 1},
                     family=FAMILY)
def run(config: Cifar10Config, session: Session) -> dict[str, float]:
    """VGG4/VGG8 on CIFAR-10 with the paper's baseline or augmented recipe (Appendix E)."""
    recipe = RECIPES[config.recipe]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    (train_x, train_y), (test_x, test_y) = load(str(Path(session.data_dir).resolve()))
    epochs = config.epochs
    if session.smoke:  # and epochs: 1 (the registered smoke config)
        train_x, train_y, test_x, test_y = train_x[:SMOKE_TRAIN_IMAGES], train_y[:SMOKE_TRAIN_IMAGES], test_x[:SMOKE_TEST_IMAGES], test_y[:SMOKE_TEST_IMAGES]
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    normalize = Normalize(MEAN, STD, device)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    torch.backends.cudnn.benchmark = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.amp)

    generator = seed_everything(config.seed)
    model, params = build_model(config, recipe.dropout)
    model.to(device, memory_format=memory_format)
    session.log_params(num_params=num_params(model), **params)
    if config.lsuv and session.restored is None:
        # the authors' first batch of a fresh pass over the (augmented) training data, its first 64 images
        order, offsets, flips = epoch_plan(len(train_y), generator, device)
        first = order[:min(LSUV_IMAGES, config.batch_size)]
        activations = ACTIVATION_MODULES
        if is_library_model(config.model):  # their own activation classes too (native, or left by swap.skip)
            activations += tuple(c for classes in library_models.activation_classes().values() for c in classes)
        lsuv(model, train_images(train_x, first, offsets, flips, recipe.augment, normalize, memory_format), activations)
    if config.compile:  # after LSUV, whose hooks need the eager model; in place, so state_dicts keep their keys
        model.compile(fullgraph=True)
    optimizer = torch.optim.SGD(
        rational_param_groups(model, config.lr, config.rational.lr_mult, recipe.weight_decay),
        lr=config.lr, momentum=MOMENTUM, nesterov=True,
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[round(f * epochs) for f in recipe.milestones], gamma=LR_DECAY)
    mixup = None
    if recipe.mixup_alpha > 0:
        from timm.data import Mixup  # noqa: PLC0415  (timm loads in a second; only this recipe needs it)
        from timm.loss import SoftTargetCrossEntropy  # noqa: PLC0415

        soft_cross_entropy = SoftTargetCrossEntropy()
        mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=0.0, label_smoothing=recipe.label_smoothing,
                      num_classes=NUM_CLASSES)
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule}

    # curve: every epoch's metrics (learning-curve plot); shapes: rational coefficients at a few
    # epochs (the paper snapshots 0, 5, 30 and 60) for the evolution plot
    snapshot_epochs = {5, epochs // 2, epochs}
    start, best_test_acc, curve, shapes = 0, 0.0, [], {0: rational_snapshot(model)}
    if session.restored is not None:
        state = restore(session.restored, parts, generator)
        start, best_test_acc, curve, shapes = state["epoch"], state["best_test_acc"], list(state["curve"]), dict(state["shapes"])

    compile_s = None  # the first step after a (re)start compiles: reported apart from the steady state
    for epoch in range(start + 1, epochs + 1):
        started = time.perf_counter()
        order, offsets, flips = epoch_plan(len(train_y), generator, device)
        loss_sum, seen = torch.zeros((), device=device), 0
        for step, batch in enumerate(order.split(config.batch_size)):
            if mixup is not None and len(batch) % 2:  # mixup pairs each image with its mirror in the batch
                batch = batch[:-1]
            x, y = train_images(train_x, batch, offsets, flips, recipe.augment, normalize, memory_format), train_y[batch]
            if mixup is not None:
                x, soft = mixup(x, y)  # soft: mixed, smoothed one-hot targets
            with autocast():
                logits = model(x).float()
            loss = soft_cross_entropy(logits, soft) if mixup is not None else F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(batch)  # no host sync per step
            seen += len(batch)
            if config.compile and compile_s is None and step == 0:
                loss_sum.item()  # the compiled step has run
                compile_s = time.perf_counter() - started
        schedule.step()
        train_loss = loss_sum.item() / seen
        check_finite(train_loss, f"epoch {epoch}")
        test_loss, test_acc = evaluate_classifier(model, normalize, test_x, test_y, autocast, EVAL_BATCH)
        best_test_acc = max(best_test_acc, test_acc)
        metrics = {
            "epoch": epoch,  # the MLflow step of this report (sweep.names.STEP_KEYS)
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "best_test_acc": best_test_acc,
            "epoch_time_s": time.perf_counter() - started,
            **({"compile_s": compile_s} if compile_s is not None and epoch == start + 1 else {}),
        }
        curve.append(metrics)
        if epoch in snapshot_epochs:
            shapes[epoch] = rational_snapshot(model)
        if epoch == epochs:  # artifacts go out with the final report
            save_learning_curve(curve, session)
            with evaluating(model), capture_inputs(model) as rational_inputs, autocast():
                model(normalize(test_x[:EVAL_BATCH]).contiguous(memory_format=memory_format))
            plot_rationals(model, session.artifact_dir, inputs=rational_inputs)
            plot_rational_evolution(model, shapes, rational_inputs, session.artifact_dir / "rational_evolution.png")
        session.report(metrics, state=checkpoint(parts, generator, epoch=epoch, best_test_acc=best_test_acc,
                                                 curve=curve, shapes=shapes))
    return curve[-1]


register_dataset("cifar10", download=download, verify=verify)
