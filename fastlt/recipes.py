"""Recipes: every setting of a run in one frozen dataclass, with presets per (dataset, method).

``preset(dataset, method)`` starts from the dataset's standard long-tailed schedule (model, epochs, optimiser,
batch size) and applies the method's parameters. Each preset carries ``source``: where its numbers come
from — a paper, a released code base, or "fastlt default" where no source gives them (CP-Mix's α, η, κ,
batch sizes and stage lengths are not published in any text we could reach; see REFERENCE.md).

Any other dataset converted under the data root (``tools/convert imagefolder|imagelist``) gets a preset too:
its base is chosen from its shard — the median image side and the class count its train index records — in
``fastlt.datasets.registry.GENERIC_BASES`` (small images → the CIFAR-LT schedule, larger ones → the
ImageNet-LT one), its eval split is ``val`` (``test`` when it has no val), and ``source`` says which base was
chosen and why.

The CLI applies ``--key value`` overrides with :func:`apply_overrides`: values are parsed by the field's type
(bool, int, float, str, tuples such as ``--milestones 160,180``); unknown keys fail with the nearest names.
A run saves the resolved recipe as ``recipe.json`` and in every checkpoint; ``--resume`` refuses a checkpoint
whose recipe differs (:func:`recipe_diff` names the keys).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fastlt.datasets import registry
from fastlt.methods import METHODS as _METHOD_TABLE
from fastlt.names import did_you_mean, unknown_name

# The datasets with a preset: the registry's entries with a base schedule, in registry order (_DATASET_BASE
# below comes from there too). `fastlt train` also accepts any dataset converted under the data root.
DATASETS = tuple(name for name, spec in registry.DATASETS.items() if spec.preset_base is not None)
METHODS = tuple(_METHOD_TABLE)  # the method names, from the one table in fastlt.methods
# The recipe's `pipeline` values: "auto" plus the names of the fastlt.pipelines registry (kept here as plain
# names so reading a recipe never imports torch; a test checks the two agree).
PIPELINE_CHOICES = ("auto", "resident", "ffcv", "dali", "torch")
SCHEDULES = ("multistep", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")
# The recipe's `augment` policy names (fastlt.pipelines.augment.POLICIES, kept here as plain names like
# PIPELINE_CHOICES) and the plan segments they can be given for (fastlt.producers; a test checks both).
AUGMENT_POLICIES = (
    "crop-flip", "crop-flip-jitter", "simclr", "simclr-cifar", "autoaugment-cifar", "randaugment",
    "clip-center",
)
PLAN_SEGMENTS = ("main", "b", "cp_a", "cp_b", "view1", "view2", "fg", "partner")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys that change how fast a run goes or where it reads from, never what it computes:
# --resume accepts a checkpoint whose recipe differs only in these.
RUNTIME_KEYS = frozenset(
    {"name", "data_root", "workers", "progress", "memory_budget_gb", "device", "tensorboard", "full_verify",
     "compile"}
)


class RecipeError(ValueError):
    """An unknown dataset / method / key, or a value of the wrong type."""


@dataclass(frozen=True)
class Recipe:
    # -- what ---------------------------------------------------------------------------------------------
    dataset: str = "digits-lt"
    method: str = "bs"
    name: str = ""  # run directory name under runs/ ("" → <dataset>-<method>-s<seed>)
    source: str = "fastlt default"
    data_root: str = "data"
    train_split: str = "train"
    eval_split: str = "test"
    seed: int = 0
    # -- model --------------------------------------------------------------------------------------------
    model: str = "smallnet"
    model_width: int = 16  # smallnet only
    classifier: str = "linear"  # linear | cosine
    cosine_scale: float = 30.0
    pretrained: str = ""  # local state-dict path for torchvision backbones ("" = random init)
    image_size: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # -- optimisation -------------------------------------------------------------------------------------
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # multistep | cosine | constant (per step, after warmup)
    warmup_epochs: int = 0
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1  # multistep factor per milestone
    steps_per_epoch: int = 0  # 0: one pass over the training split; >0 caps it (quick runs, tests)
    # false: keep an epoch's last, partial batch, as the papers' loaders do (torch DataLoader's default); a
    # remainder under 2 images per rank is dropped (a 1-image batch breaks BatchNorm in train mode).
    drop_last: bool = False
    # fine-tuning conventions of timm (same names and meanings; fastlt.optim): 0 / 1 / false turn each off
    clip_grad: float = 0.0  # clip the global L2 norm of the gradients to this (timm --clip-grad, mode norm)
    layer_decay: float = 1.0  # layer-wise lr decay: the head at lr, depth i of L at lr·decay^(L−1−i)
    model_ema: bool = False  # evaluate (and checkpoint) an exponential moving average of the weights
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False  # timm ModelEmaV3 warmup: decay 1 − (1 + t)^(−2/3), capped at the decay
    eval_every: int = 1  # evaluate every N epochs and after the last one (0: never — benchmarks)
    # -- data path ----------------------------------------------------------------------------------------
    pipeline: str = "auto"  # auto: resident when the decoded split fits memory_budget_gb, else ffcv
    memory_budget_gb: float = 4.0
    workers: int = 2
    lookahead: int = 2  # plans made ahead of the trainer; CP-Mix pairs are at most this many steps stale
    # Hash every shard in full at start, whatever its <split>.verified cache says (catches what the cache
    # cannot: bytes changed without a write through the filesystem, e.g. bit rot). Same as `fastlt verify`.
    full_verify: bool = False
    # Training augmentation per plan segment: SEGMENT=POLICY entries and one bare POLICY for the other
    # segments, e.g. main=randaugment,view1=simclr,view2=simclr,randaugment (fastlt.pipelines.augment).
    augment: tuple[str, ...] = ("crop-flip",)
    # -- runtime ------------------------------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on CPU)
    channels_last: bool = True  # on CUDA
    # torch.compile the model in place (nn.Module.compile: parameter names, checkpoints and model.features
    # stay as they are). Off by default: the first steps pay the compilation (tens of seconds to minutes),
    # which short runs and CPU runs never win back; turn it on for long GPU runs (README "Compiling").
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False  # also stream each metrics line to <run>/tensorboard (the tensorboard package)
    # -- mixing baselines (Mixup / CutMix / Remix) -----------------------------------------------------
    mix_alpha: float = 1.0  # λ ~ Beta(α, α)
    mix_per_sample: bool = False  # one λ (one CutMix box) per batch, as in the papers; true: one per sample
    remix_kappa: float = 3.0
    remix_tau: float = 0.5
    # -- LDAM-DRW ---------------------------------------------------------------------------------------
    ldam_max_m: float = 0.5
    ldam_s: float = 30.0
    drw_epoch: int = 160  # class re-weighting starts at this epoch (0-based)
    drw_beta: float = 0.9999
    # -- CP-Mix (fastlt defaults; the paper's tables are unavailable) -----------------------------------
    cpmix_alpha: float = 1.0
    cpmix_eta: float = 0.5
    cpmix_kappa: float = 0.5  # λ_y = (1−κ)·λ_x + κ·n_b/(n_a+n_b) — fastlt's reconstruction
    cpmix_batch_size: int = 0  # B_m (0: same as batch_size)
    cpmix_fallback: str = "instance"  # class with no recorded pairs: instance-uniform partner | redraw i
    cpmix_start_epoch: int = -1  # first epoch of the mixing stage (−1: round(2/3 · epochs))
    finetune_epochs: int = 0  # classifier fine-tune with frozen backbone on class-balanced batches
    finetune_lr: float = 0.01
    # -- ConCutMix / BCL (released code; REFERENCE.md) --------------------------------------------------
    ccm_alpha: float = 2.0  # weight of the LA-CE term
    ccm_beta: float = 0.6  # weight of the BCL term
    ccm_temperature: float = 0.1  # T
    ccm_feat_dim: int = 128
    ccm_tau_la: float = 0.9  # logit adjustment τ
    ccm_topk: int = 30
    ccm_omega: float = 20 / 255
    ccm_l_d_warm: int = 100  # epoch after which the rectified label is used
    ccm_cutmix_prob: float = 0.5
    # -- LFM (text-guided mixup; REFERENCE.md) ---------------------------------------------------------
    lfm_alpha: tuple[float, ...] = (1.0, 1.0)  # label-shift α per stage
    lfm_beta: float = 0.2  # λ_x ~ Beta(b, b): released code 0.2, paper 0.5
    lfm_lambda_per: str = "batch"  # batch | sample
    lfm_tau: float = 0.05  # partner temperature
    lfm_mms_lambda: float = 0.3
    lfm_mms_T: float = 0.01
    lfm_loss: str = "mms"  # ce | mms
    lfm_clip_checkpoint: str = ""  # local open_clip checkpoint ("" = offline sentence encoder)
    lfm_clip_model: str = ""  # its open_clip architecture (e.g. ViT-B-32) or a JSON config path
    lfm_text_encoder: str = "all-MiniLM-L6-v2"
    lfm_epochs: tuple[int, ...] = (50, 10)
    lfm_lrs: tuple[float, ...] = (1e-6, 1e-2)

    # ----------------------------------------------------------------------------------------------------
    def __post_init__(self):
        _check_dataset_name(self.dataset)
        _check_choice("pipeline", self.pipeline, PIPELINE_CHOICES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("classifier", self.classifier, ("linear", "cosine"))
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("lfm_lambda_per", self.lfm_lambda_per, ("batch", "sample"))
        _check_choice("lfm_loss", self.lfm_loss, ("ce", "mms"))
        _check_choice("cpmix_fallback", self.cpmix_fallback, ("instance", "redraw"))
        split_augment(self.augment)
        for k in ("epochs", "batch_size", "eval_batch_size", "image_size"):
            if getattr(self, k) <= 0:
                raise RecipeError(f"recipe key {k!r} must be > 0, got {getattr(self, k)}")
        if self.lr <= 0:
            raise RecipeError(f"recipe key 'lr' must be > 0, got {self.lr}")
        if not 0 < self.layer_decay <= 1 or not 0 <= self.model_ema_decay <= 1 or self.clip_grad < 0:
            raise RecipeError(
                f"recipe keys 'layer_decay' (0, 1], 'model_ema_decay' [0, 1] and 'clip_grad' ≥ 0: got "
                f"{self.layer_decay}, {self.model_ema_decay}, {self.clip_grad}"
            )
        if not 0 <= self.cpmix_kappa <= 1:
            raise RecipeError(f"recipe key 'cpmix_kappa' must lie in [0, 1], got {self.cpmix_kappa}")
        if list(self.milestones) != sorted(self.milestones):
            raise RecipeError(f"recipe key 'milestones' must be increasing, got {self.milestones}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise RecipeError("recipe keys 'mean' and 'std' need 3 values (R,G,B)")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.dataset}-{self.method}-s{self.seed}"

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, d: dict, where: str = "recipe") -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known, cutoff=0.5)
            raise RecipeError(f"{where}: unknown recipe keys {unknown}{hint}")
        hints = typing.get_type_hints(cls)
        kw = {}
        for k, v in d.items():
            kw[k] = _coerce_json(k, v, hints[k], where)
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RecipeError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        return cls.from_json(d, str(path))


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise RecipeError(unknown_name(key, value, choices, cutoff=0.5))


def split_augment(spec: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``augment`` entries → (policy of the unnamed segments, {segment: policy}); a bad entry is a
    RecipeError naming it."""
    default, named = None, {}
    for entry in spec:
        segment, _, name = entry.rpartition("=")
        _check_choice("augment policy", name, AUGMENT_POLICIES)
        if not segment:
            if default is not None:
                raise RecipeError(f"--augment: two policies for the unnamed segments ({default}, {name})")
            default = name
            continue
        _check_choice("augment segment", segment, PLAN_SEGMENTS)
        if segment in named:
            raise RecipeError(f"--augment: segment {segment!r} is given twice")
        named[segment] = name
    return default or "crop-flip", named


def _check_dataset_name(name: str) -> None:
    """A preset's name, or one a converted dataset can have (a folder name that is not a converter's)."""
    if name in DATASETS:
        return
    if name in registry.DATASETS:
        raise RecipeError(
            f"unknown dataset {name!r}: that is a converter, and its shards are named after your folder "
            f"(see tools/convert {name} --help)"
        )
    problem = registry.own_name_problem(name)
    if problem:
        raise RecipeError(f"unknown dataset {name!r}: {problem}")


# ------------------------------------------------------------------------------------------ parsing
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(key: str, text: str, typ) -> object:
    """Parse the command-line text of ``--key text`` as the field's type, or raise RecipeError saying why."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            t = text.strip().lower()
            if t in _TRUE:
                return True
            if t in _FALSE:
                return False
            raise ValueError
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if origin is tuple:
            (elem, _) = typing.get_args(typ)
            items = [s for s in text.replace(" ", "").strip("()[]").split(",") if s != ""]
            return tuple(elem(s) for s in items)
    except ValueError:
        pass
    expected = {bool: "a bool (true/false)", int: "an integer", float: "a number", str: "a string"}.get(typ)
    if origin is tuple:
        expected = f"a comma-separated list of {typing.get_args(typ)[0].__name__} (e.g. 160,180)"
    raise RecipeError(f"--{key.replace('_', '-')}: expected {expected or typ}, got {text!r}")


def _coerce_json(key: str, v, typ, where: str):
    origin = typing.get_origin(typ)
    ok = (
        (typ is bool and isinstance(v, bool))
        or (typ is int and isinstance(v, int) and not isinstance(v, bool))
        or (typ is float and isinstance(v, (int, float)) and not isinstance(v, bool))
        or (typ is str and isinstance(v, str))
        or (origin is tuple and isinstance(v, (list, tuple)))
    )
    if not ok:
        raise RecipeError(f"{where}: key {key!r} must be {getattr(typ, '__name__', typ)}, got {v!r}")
    if origin is tuple:
        elem = typing.get_args(typ)[0]
        return tuple(elem(x) for x in v)
    return float(v) if typ is float else v


def split_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """``['--lr', '0.1', '--milestones=160,180']`` → ``[('lr', '0.1'), ('milestones', '160,180')]``.

    A bool key given alone (``--compile``, last or followed by another ``--key``) means true."""
    hints = typing.get_type_hints(Recipe)
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise RecipeError(f"expected --key value, got {a!r}")
        key = a[2:].replace("-", "_")
        key = ALIASES.get(key, key)
        alone = i + 1 == len(argv) or argv[i + 1].startswith("--")
        if "=" in a:
            k, v = a[2:].split("=", 1)
            i += 1
        elif alone and hints.get(key) is bool:
            k, v = a[2:], "true"
            i += 1
        else:
            if alone and key not in hints:
                raise unknown_key(key)  # before "needs a value": a misspelt flag is the likelier mistake
            if alone:
                raise RecipeError(f"{a} needs a value")
            k, v = a[2:], argv[i + 1]
            i += 2
        out.append((k.replace("-", "_"), v))
    return out


# Short command-line names for recipe keys (``--clip-checkpoint PATH`` sets ``lfm_clip_checkpoint``).
ALIASES = {"clip_checkpoint": "lfm_clip_checkpoint", "clip_model": "lfm_clip_model"}


def unknown_key(key: str) -> RecipeError:
    """The error for a key no recipe has, with the nearest valid names."""
    known = [f.name for f in fields(Recipe)]
    hint = did_you_mean(key, known, cutoff=0.5, fmt=lambda n: "--" + n.replace("_", "-"))
    return RecipeError(f"unknown recipe key --{key.replace('_', '-')}{hint}")


def apply_overrides(recipe: Recipe, pairs) -> Recipe:
    """Apply ``(key, text)`` pairs (or a ``--key value`` argv list) to a recipe, type-checked."""
    if pairs and isinstance(pairs[0], str):
        pairs = split_overrides(list(pairs))
    hints = typing.get_type_hints(Recipe)
    changes = {}
    for k, v in pairs:
        k = ALIASES.get(k, k)
        if k not in hints:
            raise unknown_key(k)
        changes[k] = parse_value(k, v, hints[k])
    return replace(recipe, **changes)


def recipe_diff(a: Recipe, b: Recipe, ignore=RUNTIME_KEYS) -> dict[str, tuple]:
    """Keys whose values differ (runtime-only keys ignored): ``{key: (a_value, b_value)}``."""
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in fields(Recipe)
        if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)
    }


# ------------------------------------------------------------------------------------------ presets
# The dataset's standard long-tailed schedule (fastlt.datasets.registry: sources as noted there).
_DATASET_BASE = {name: registry.DATASETS[name].preset_base for name in DATASETS}

_CCM_CIFAR100 = dict(
    epochs=200,
    batch_size=256,
    lr=0.15,
    weight_decay=5e-4,
    warmup_epochs=5,
    milestones=(160, 180),
    lr_decay=0.1,
    ccm_alpha=2.0,
    ccm_beta=0.6,
    ccm_temperature=0.1,
    ccm_feat_dim=128,
    ccm_tau_la=0.9,
    ccm_topk=30,
    ccm_omega=20 / 255,
    ccm_l_d_warm=100,
    augment=("main=autoaugment-cifar", "fg=autoaugment-cifar", "view1=simclr-cifar", "view2=simclr-cifar"),
    source="ConCutMix released code (CIFAR-100-LT IF100), its CIFAR augmentations included; one prototype "
    "per class as in its ImageNet-LT / iNat runs (its CIFAR runs, without --use_norm, build one per feature "
    "column)",
)
_CCM_LARGE = dict(
    classifier="cosine",
    epochs=100,
    batch_size=256,
    lr=0.1,
    schedule="cosine",
    warmup_epochs=0,  # the released ImageNet-LT / iNat runs have no warmup (iNat's dataset base has 5)
    weight_decay=5e-4,
    milestones=(),
    ccm_alpha=1.0,
    ccm_beta=0.35,
    ccm_temperature=0.07,
    ccm_feat_dim=1024,
    ccm_tau_la=0.99,
    ccm_topk=30,
    ccm_omega=200 / 255,
    ccm_l_d_warm=70,
    augment=("main=randaugment", "fg=randaugment", "view1=simclr", "view2=simclr"),
    source="ConCutMix released code (ImageNet-LT), its augmentations included",
)

_CPMIX_SOURCE = (
    "CP-Mix paper: SGD lr 0.1 (Places-LT 0.01), the models, the schedule shapes and the 2/3 stage split "
    "(prose); fastlt defaults (the paper's tables are unavailable): α 1, η 0.5, κ 0.5, B_m = B, the "
    "fine-tune length and lr, batch sizes, milestones and epochs — the paper trains CIFAR-LT and ImageNet-LT "
    "longer than previous works, by an amount not recoverable, and the presets keep the standard 200 / 90"
)
_LFM_AUGMENT = dict(augment=("clip-center",))  # released code: flip + CLIP's resize + centre crop
_LFM_AUGMENT_SOURCE = "augmentation: the released code's flip + CLIP resize and centre crop"

# Method parameters per dataset (on top of the dataset base). `None` key: every dataset.
_METHOD: dict[str, dict[str | None, dict]] = {
    "ce": {None: dict()},
    "bs": {None: dict(source_extra="Balanced Softmax (Ren et al. 2020): loss has no hyperparameters")},
    "ldam-drw": {
        None: dict(
            classifier="cosine",
            ldam_max_m=0.5,
            ldam_s=30.0,
            drw_beta=0.9999,
            source_extra="LDAM-DRW (Cao et al. 2019): max margin 0.5, s 30, DRW β 0.9999",
        ),
    },
    "mixup": {None: dict(mix_alpha=1.0, source_extra="Mixup α 1 (Zhang et al. 2018)")},
    "cutmix": {None: dict(mix_alpha=1.0, source_extra="CutMix α 1 (Yun et al. 2019)")},
    "remix": {
        None: dict(
            mix_alpha=1.0, remix_kappa=3.0, remix_tau=0.5, source_extra="Remix κ 3, τ 0.5 (Chou et al. 2020)"
        )
    },
    "cpmix": {
        None: dict(
            cpmix_alpha=1.0,
            cpmix_eta=0.5,
            cpmix_kappa=0.5,
            finetune_epochs=10,
            finetune_lr=0.01,
            source_extra=_CPMIX_SOURCE,
        ),
        "digits-lt": dict(finetune_epochs=3, finetune_lr=0.01),
        "places-lt": dict(finetune_epochs=0),  # the paper does not fine-tune on Places-LT
        "imagenet-lt": dict(finetune_lr=0.01),
        "inat2018": dict(
            lr=0.1,
            finetune_lr=0.01,
            source_extra=f"{_CPMIX_SOURCE}; lr 0.1 is the paper's (the LDAM-DRW schedule above has 0.2)",
        ),
    },
    "concutmix": {
        None: dict(ccm_cutmix_prob=0.5),
        "cifar100-lt": _CCM_CIFAR100,
        "cifar10-lt": dict(
            _CCM_CIFAR100,
            ccm_tau_la=0.85,
            ccm_topk=3,
            ccm_omega=2 / 255,
            source="ConCutMix released code (CIFAR-10-LT IF100), its CIFAR augmentations included; one "
            "prototype per class as in its ImageNet-LT / iNat runs (its CIFAR runs build one per feature "
            "column)",
        ),
        "imagenet-lt": _CCM_LARGE,
        "inat2018": dict(
            _CCM_LARGE,
            lr=0.2,
            weight_decay=1e-4,
            ccm_omega=1628 / 255,
            ccm_l_d_warm=80,
            batch_size=256,
            source="ConCutMix released code (iNat2018), its augmentations included",
        ),
        "places-lt": dict(
            _CCM_LARGE,
            source="fastlt default (ConCutMix has no released Places-LT settings; ImageNet-LT values and "
            "augmentations)",
        ),
        "digits-lt": dict(
            ccm_feat_dim=32,
            ccm_topk=3,
            ccm_omega=2 / 255,
            ccm_l_d_warm=10,
            ccm_temperature=0.1,
            ccm_tau_la=1.0,
            source="fastlt default",
        ),
    },
    "lfm": {
        None: dict(
            optimizer="adam",
            schedule="cosine",
            weight_decay=0.0,
            lfm_loss="mms",
            lfm_lambda_per="batch",
            lfm_beta=0.2,
        ),
        "cifar100-lt": dict(
            batch_size=32,
            lfm_epochs=(50, 10),
            lfm_lrs=(1e-6, 1e-2),
            lfm_alpha=(1.0, 1.0),
            lfm_tau=0.05,
            lfm_clip_model="ViT-B-32",
            **_LFM_AUGMENT,
            source=f"LFM released code (CIFAR-100-LT, ViT-B/32); {_LFM_AUGMENT_SOURCE}",
        ),
        "cifar10-lt": dict(
            batch_size=32,
            lfm_epochs=(10, 10),
            lfm_lrs=(1e-9, 0.5),
            lfm_alpha=(1.0, 1.0),
            lfm_tau=0.05,
            lfm_clip_model="ViT-B-32",
            **_LFM_AUGMENT,
            source=f"LFM released code (CIFAR-10-LT, ViT-B/32); {_LFM_AUGMENT_SOURCE}",
        ),
        "imagenet-lt": dict(
            batch_size=96,
            lfm_epochs=(30, 10),
            lfm_lrs=(5e-6, 1e-2),
            lfm_alpha=(1.0, 1.0),
            lfm_tau=0.05,
            lfm_clip_model="ViT-B-16",
            **_LFM_AUGMENT,
            source=f"LFM released code (ImageNet-LT, ViT-B/16); {_LFM_AUGMENT_SOURCE}",
        ),
        "places-lt": dict(
            batch_size=96,
            lfm_epochs=(30, 10),
            lfm_lrs=(1e-7, 5e-4),
            lfm_alpha=(1.25, 1.5),
            lfm_tau=1.0,
            lfm_clip_model="ViT-B-16",
            **_LFM_AUGMENT,
            source="LFM released code (Places-LT: epochs, learning rates, batch, α 1.25 / 1.5, τ 1.0); "
            "ViT-B/16 from the paper's Table 4 (the released Places command resolves to ViT-B/32); "
            f"{_LFM_AUGMENT_SOURCE}",
        ),
        "inat2018": dict(
            batch_size=96,
            lfm_epochs=(30, 10),
            lfm_lrs=(5e-6, 1e-2),
            lfm_alpha=(1.0, 1.0),
            lfm_tau=0.05,
            lfm_clip_model="ViT-B-16",
            **_LFM_AUGMENT,
            source="fastlt default (LFM reports no iNat2018 setting; ImageNet-LT values); "
            f"{_LFM_AUGMENT_SOURCE}",
        ),
        # fastlt default. A backbone trained from scratch does poorly with CLIPood's T = 0.01 (a logit scale
        # of 100, made for pretrained CLIP features): T = 0.05 with Adam 3e-3 was the best of the settings
        # tried on seed 0 (T 0.01–0.1, stage-1 lr 1e-3–1e-2; digits-lt has no validation split). W_I trains
        # at 1e-4: at 1e-2 a few Adam steps rotate the 384-d identity away and undo stage 1.
        "digits-lt": dict(
            batch_size=64,
            lfm_epochs=(25, 5),
            lfm_lrs=(3e-3, 1e-4),
            lfm_alpha=(1.0, 1.0),
            lfm_tau=0.05,
            lfm_mms_T=0.05,
            source="fastlt default",
        ),
    },
}


def _with_method(base: dict, method: str, like: str, extra_keys=None) -> tuple[dict, str]:
    """(recipe keys, source) of ``base`` (a dataset schedule, ``source`` included) with ``method``'s
    parameters for the preset dataset ``like`` applied, then ``extra_keys``."""
    kw = dict(base)
    base_source = kw.pop("source")
    per = _METHOD[method]
    m = {**per.get(None, {}), **per.get(like, {})}
    extra = [m.pop("source_extra", None)]
    if extra_keys:
        m.update(extra_keys)
        extra.append(m.pop("source_extra", None))
    kw.update(m)
    src = "; ".join([kw.pop("source", base_source), *(e for e in extra if e)])
    return kw, src


def preset(dataset: str, method: str, data_root: str = "data") -> Recipe:
    """The recipe for ``dataset`` × ``method`` with its source noted. A dataset without a preset is looked up
    under ``data_root`` and gets the base its shard calls for (module docstring)."""
    _check_choice("method", method, METHODS)
    if dataset not in DATASETS:
        return own_preset(dataset, method, data_root)
    kw, src = _with_method(_DATASET_BASE[dataset], method, dataset)
    return Recipe(dataset=dataset, method=method, source=src, **kw)


def resolve(dataset: str, method: str, overrides=()) -> Recipe:
    """Preset + overrides (``--key value`` list or ``(key, text)`` pairs); a ``--data-root`` among them is
    where a dataset without a preset is looked up."""
    pairs = list(overrides)
    if pairs and isinstance(pairs[0], str):
        pairs = split_overrides(pairs)
    data_root = next((v for k, v in reversed(pairs) if k == "data_root"), "data")
    return apply_overrides(preset(dataset, method, data_root), pairs)


# ---------------------------------------------------------------------------- datasets of one's own
EVAL_SPLITS = ("val", "test")  # a converted dataset is evaluated on the first of these it has


def own_datasets(data_root: str | Path) -> list[str]:
    """The datasets converted under ``data_root``: its folders that hold a train index."""
    root = Path(data_root)
    return sorted(p.parent.name for p in root.glob("*/train.index.json")) if root.is_dir() else []


@dataclass(frozen=True)
class OwnShard:
    """What a converted dataset's base recipe is chosen from (its train index, and which splits exist)."""

    name: str
    num_classes: int
    short_side: int  # median short image side, as stored
    eval_split: str

    @classmethod
    def read(cls, data_root: str | Path, name: str) -> OwnShard:
        folder = Path(data_root) / name
        index_path = folder / "train.index.json"
        try:
            index = json.loads(index_path.read_text())
            num_classes, settings = int(index["num_classes"]), index["settings"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RecipeError(f"{index_path}: not a readable shard index ({e}); re-run tools/convert") \
                from None
        present = [s for s in EVAL_SPLITS if (folder / f"{s}.index.json").exists()]
        if not present:
            raise RecipeError(
                f"{folder} has a train split but no {' or '.join(EVAL_SPLITS)} split to evaluate on; "
                "re-convert it (tools/convert imagefolder makes a held-out val split from a single folder)"
            )
        sides = settings.get("image_sides") or {}
        short = int(sides["short"]) if sides.get("sampled") else _stored_short_side(folder / "train.beton")
        return cls(name, num_classes, short, present[0])


def _stored_short_side(beton: Path) -> int:
    """Median short side of the images of a shard whose index records none (a converter other than
    imagefolder/imagelist), from the .beton's own per-row metadata."""
    import numpy as np

    from fastlt.pipelines.beton import BetonImages

    images = BetonImages(beton)
    return int(np.median(np.minimum(images.heights, images.widths)))


def own_preset(dataset: str, method: str, data_root: str = "data") -> Recipe:
    """The recipe for a dataset converted under ``data_root`` that has no preset (module docstring)."""
    _check_dataset_name(dataset)
    present = own_datasets(data_root)
    if dataset not in present:
        hint = did_you_mean(dataset, [*DATASETS, *present], cutoff=0.5)
        there = ", ".join(present) if present else "none yet"
        raise RecipeError(
            f"unknown dataset {dataset!r}{hint} (presets: {', '.join(DATASETS)}; converted under "
            f"{data_root}: {there}). To train on your own images, convert them first:\n    "
            f"{registry.own_convert_command(dataset, data_root)}"
        )
    shard = OwnShard.read(data_root, dataset)
    base = registry.generic_base(shard.short_side, shard.num_classes)
    kw, src = _with_method(base.preset_base, method, base.method_like, base.method_keys.get(method))
    # ConCutMix's rectified label takes the top-k of the classes: never more than there are.
    kw["ccm_topk"] = min(int(kw.get("ccm_topk", Recipe.ccm_topk)), shard.num_classes)
    chosen = (
        f"{dataset} has no preset: base '{base.name}' chosen from its shard ({shard.num_classes} classes, "
        f"median short image side {shard.short_side} px), method parameters as for {base.method_like}, "
        f"evaluated on its {shard.eval_split} split"
    )
    return Recipe(dataset=dataset, method=method, source=f"{chosen}; {src}", data_root=str(data_root),
                  eval_split=shard.eval_split, **kw)


__all__ = [
    "Recipe",
    "RecipeError",
    "preset",
    "resolve",
    "apply_overrides",
    "split_overrides",
    "parse_value",
    "recipe_diff",
    "DATASETS",
    "METHODS",
    "RUNTIME_KEYS",
    "own_datasets",
    "own_preset",
    "OwnShard",
]
