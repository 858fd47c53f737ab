"""Training methods: each is built from a recipe and the shard index, and declares its stages, a plan producer
per stage and a loss (``fastlt.methods.base``).

``METHODS`` is the one table of method names: the recipe's accepted ``method`` values, the CLI's choices and
``get_method``'s lookup all come from it. It maps each name to the module that registers its class, so
naming a method imports only that module (and nothing here imports torch).
"""

METHODS: dict[str, str] = {
    "ce": "fastlt.methods.baselines",
    "bs": "fastlt.methods.baselines",
    "ldam-drw": "fastlt.methods.baselines",
    "mixup": "fastlt.methods.baselines",
    "cutmix": "fastlt.methods.baselines",
    "remix": "fastlt.methods.baselines",
    "cpmix": "fastlt.methods.cpmix",
    "concutmix": "fastlt.methods.concutmix",
    "lfm": "fastlt.methods.lfm",
}
