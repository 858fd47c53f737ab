"""Every dataset fastlt knows, in one table: its converter, its standard schedule and how to make its shard.

``DATASETS[name]`` is a :class:`DatasetSpec`. ``name`` is both the ``tools/convert`` subcommand and the
shard folder under the data root. A spec with a ``preset_base`` is a dataset ``fastlt train`` accepts
(``fastlt.recipes.DATASETS`` lists those, in this table's order); one without (``imagefolder``: any
``root/<class>/*.jpg`` tree) is a converter only. Subcommands that write something other than a shard
(``synth-inat``) are tools, not datasets, and stay in ``fastlt.convert.HELPERS``.

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
        "root/<class>/*.jpg (optionally root/{train,val,test}/...)",
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


__all__ = ["DatasetSpec", "DATASETS", "convert_command", "CIFAR_MEAN", "CIFAR_STD"]
