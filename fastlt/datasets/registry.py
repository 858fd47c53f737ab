"""Every dataset fastlt knows, in one table: its converter, its standard schedule and how to make its shard.

``DATASETS[name]`` is a :class:`DatasetSpec`. ``name`` is both the ``tools/convert`` subcommand and the
shard folder under the data root. A spec with a ``preset_base`` is a dataset with a preset
(``fastlt.recipes.DATASETS`` lists those, in this table's order); one without (``imagefolder``: a folder of
class folders; ``imagelist``: list or CSV files) converts a user's own images, into a folder named after
them. Subcommands that write something other than a shard (``synth-inat``) are tools, not datasets, and stay
in ``fastlt.convert.HELPERS``.

Any other shard under the data root trains too: ``GENERIC_BASES`` is the table its base recipe is chosen
from, by the shard's image size and class count (:func:`generic_base`).

Stdlib only: ``fastlt.recipes`` and ``fastlt.convert`` import it at startup, before torch or any converter.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fastlt.names import unknown_name

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # tools/convert subcommand = shard folder under the data root
    converter_module: str  # exposes add_arguments(parser) (or add_arguments_for) and build(args) -> Job
    help: str  # one line for tools/convert --help
    # Recipe keys of the dataset's standard long-tailed schedule, ``source`` included (where the numbers come
    # from; "fastlt default" where none applies). None: no preset — `fastlt train` does not offer it.
    preset_base: Mapping[str, object] | None = None
    # The command that makes the shard, printed when it is missing; ``{root}`` is the recipe's data root.
    convert_template: str | None = None

    def __post_init__(self):
        if self.preset_base is not None and self.convert_template is None:
            raise ValueError(f"dataset {self.name!r} has a preset but no convert command")


def _frozen(**keys) -> Mapping[str, object]:
    return MappingProxyType(keys)


_CIFAR_LT_BASE = _frozen(
    model="resnet32",
    image_size=32,
    epochs=200,
    batch_size=128,
    lr=0.1,
    weight_decay=2e-4,
    schedule="multistep",
    warmup_epochs=5,
    milestones=(160, 180),
    lr_decay=0.01,
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
    drw_epoch=160,
    source="CIFAR-LT schedule of LDAM-DRW (Cao et al. 2019, paper + released code)",
)

_SPECS = (
    DatasetSpec(
        "digits-lt",
        "fastlt.datasets.digits",
        "embedded sklearn digits, long-tailed train (IF 10), 32x32, raw",
        _frozen(
            model="smallnet",
            image_size=32,
            epochs=30,
            batch_size=64,
            lr=0.05,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=1,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            drw_epoch=20,
            source="fastlt default (digits-lt is fastlt's own embedded dataset)",
        ),
        "tools/convert digits-lt --out {root}",
    ),
    DatasetSpec(
        "cifar10-lt",
        "fastlt.datasets.cifar",
        "CIFAR-10 python pickles → CIFAR-10-LT (Cui et al. rule)",
        _CIFAR_LT_BASE,
        "tools/convert cifar10-lt /path/to/cifar-10-batches-py --imbalance-factor 100 --out {root}",
    ),
    DatasetSpec(
        "cifar100-lt",
        "fastlt.datasets.cifar",
        "CIFAR-100 python pickles → CIFAR-100-LT (Cui et al. rule)",
        _CIFAR_LT_BASE,
        "tools/convert cifar100-lt /path/to/cifar-100-python --imbalance-factor 100 --out {root}",
    ),
    DatasetSpec(
        "imagenet-lt",
        "fastlt.datasets.oltr",
        "ImageNet image root + OLTR split files",
        _frozen(
            model="resnet50",
            image_size=224,
            epochs=90,
            batch_size=256,
            lr=0.1,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=0,
            drw_epoch=60,
            pipeline="auto",
            source="ImageNet-LT ResNet-50 cosine schedule (standard LT setting); epochs/batch fastlt default",
        ),
        "tools/convert imagenet-lt --root /path/to/imagenet --train ImageNet_LT_train.txt "
        "--test ImageNet_LT_test.txt --out {root}",
    ),
    DatasetSpec(
        "places-lt",
        "fastlt.datasets.oltr",
        "Places365 image root + OLTR split files",
        _frozen(
            model="resnet152",
            image_size=224,
            epochs=30,
            batch_size=128,
            lr=0.01,
            weight_decay=5e-4,
            schedule="multistep",
            milestones=(10, 20),
            lr_decay=0.1,
            drw_epoch=20,
            source="Places-LT: ImageNet-pretrained ResNet-152, lr 0.01, ×0.1 steps (OLTR-style); "
            "epochs/milestones fastlt default; set --pretrained to a local ResNet-152 state dict",
        ),
        "tools/convert places-lt --root /path/to/places365 --train Places_LT_train.txt "
        "--test Places_LT_test.txt --out {root}",
    ),
    DatasetSpec(
        "inat2018",
        "fastlt.datasets.inat",
        "iNaturalist 2018 root + train2018.json / val2018.json",
        _frozen(
            model="resnet50",
            classifier="cosine",
            image_size=224,
            epochs=90,
            batch_size=512,
            lr=0.2,
            weight_decay=1e-4,
            schedule="multistep",
            warmup_epochs=5,
            milestones=(30, 60),
            lr_decay=0.1,
            drw_epoch=60,
            eval_split="val",  # iNat 2018 publishes train and val (3 images per class) only
            source="iNat2018 schedule of LDAM-DRW (Cao et al. 2019: 90 ep, batch 512, lr 0.2, ×0.1 at "
            "30/60) with the cosine classifier CP-Mix uses",
        ),
        "tools/convert inat2018 /path/to/inat2018 --out {root}",
    ),
    DatasetSpec(
        "imagefolder",
        "fastlt.datasets.imagefolder",
        "your own images: root/<class>/* (held-out split made here) or root/{train,val,test}/<class>/*",
    ),
    DatasetSpec(
        "imagelist",
        "fastlt.datasets.imagelist",
        "your own images: a list or CSV file per split ('path,label' or 'path label'; label index or name)",
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def convert_command(name: str, root: str) -> str:
    """The ``tools/convert`` command that writes dataset ``name``'s shards under ``root``, ready to paste
    into a shell (``root`` quoted: a data root with spaces or quotes in it stays one argument)."""
    spec = DATASETS.get(name)
    if spec is None or spec.convert_template is None:
        with_command = [n for n, s in DATASETS.items() if s.convert_template is not None]
        raise ValueError(unknown_name("dataset", name, with_command))
    return spec.convert_template.format(root=shlex.quote(str(root)))


# ------------------------------------------------------------------------- datasets of one's own
@dataclass(frozen=True)
class GenericBase:
    """The base recipe of a converted dataset that has no preset, chosen from its shard.

    The first entry of ``GENERIC_BASES`` whose limits the shard meets is chosen: its median short image
    side (as stored) at most ``max_side`` and its class count at most ``max_classes`` (None: no limit).
    The methods' parameters are those of the preset dataset ``method_like`` (e.g. ConCutMix's top-k and
    τ_LA of CIFAR-10-LT for ten classes or fewer), then ``method_keys[method]`` on top.
    """

    name: str
    max_side: int | None
    max_classes: int | None
    method_like: str
    preset_base: Mapping[str, object]
    method_keys: Mapping[str, Mapping[str, object]]

    def fits(self, short_side: int, num_classes: int) -> bool:
        return (self.max_side is None or short_side <= self.max_side) and (
            self.max_classes is None or num_classes <= self.max_classes
        )


_SMALL_IMAGES_BASE = _frozen(
    **{k: v for k, v in _CIFAR_LT_BASE.items() if k != "source"},
    source="small images: the CIFAR-LT schedule of LDAM-DRW (Cao et al. 2019: ResNet-32, 32 px, 200 epochs, "
    "×0.01 at 160/180)",
)
_PHOTOS_BASE = _frozen(
    **{k: v for k, v in DATASETS["imagenet-lt"].preset_base.items() if k != "source"},
    source="photos: the ImageNet-LT schedule (ResNet-50, 224 px, 90 epochs, cosine; ImageNet mean/std)",
)


def _lfm_from_scratch(epochs: tuple[int, int]) -> Mapping[str, object]:
    """LFM without a CLIP checkpoint trains its backbone from scratch: the released settings' learning rates
    (made for fine-tuning CLIP) would leave it untrained, so these are digits-lt's from-scratch values."""
    return _frozen(
        lfm_epochs=epochs,
        lfm_lrs=(3e-3, 1e-4),
        lfm_tau=0.05,
        lfm_mms_T=0.05,
        lfm_clip_model="",
        # CLIP's centre crop is the released fine-tuning augmentation; a backbone trained from scratch needs
        # the random crops every other from-scratch recipe uses
        augment=("crop-flip",),
        source="LFM from scratch (no CLIP checkpoint): Adam 3e-3, then W_I at 1e-4, T 0.05, crop-flip — "
        "fastlt default, as on digits-lt; with --clip-checkpoint use the released values (e.g. --lfm-lrs "
        "5e-6,1e-2 --augment clip-center)",
    )


GENERIC_BASES = (
    GenericBase(
        "small images, up to 10 classes", 64, 10, "cifar10-lt", _SMALL_IMAGES_BASE,
        _frozen(lfm=_lfm_from_scratch((180, 20))),
    ),
    GenericBase(
        "small images", 64, None, "cifar100-lt", _SMALL_IMAGES_BASE, _frozen(lfm=_lfm_from_scratch((180, 20)))
    ),
    GenericBase("photos", None, None, "imagenet-lt", _PHOTOS_BASE, _frozen(lfm=_lfm_from_scratch((80, 10)))),
)


def generic_base(short_side: int, num_classes: int) -> GenericBase:
    """The :data:`GENERIC_BASES` entry for a shard of ``num_classes`` classes whose images have this median
    short side (in stored pixels)."""
    return next(b for b in GENERIC_BASES if b.fits(short_side, num_classes))


def own_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a dataset (a folder under the data root), or None when it can."""
    if not name or name in (".", "..") or name.startswith("."):
        return f"dataset name {name!r} is empty or hidden; name it with --name"
    if "/" in name or "\\" in name or "\0" in name:
        return f"dataset name {name!r} is not a single folder name; name it with --name"
    return None


def own_convert_command(name: str, root: str) -> str:
    """The command that makes the shards of a dataset of one's own called ``name`` under ``root``."""
    return f"tools/convert imagefolder /path/to/{shlex.quote(name)} --out {shlex.quote(str(root))}"


__all__ = [
    "DatasetSpec",
    "DATASETS",
    "convert_command",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "GenericBase",
    "GENERIC_BASES",
    "generic_base",
    "own_name_problem",
    "own_convert_command",
]
