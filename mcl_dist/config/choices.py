"""Every choice the config names, as one table of registries checked when the config loads:
an unknown name is refused with the closest valid one, and the chosen entry's `check` refuses the
settings it cannot run, so `--dry-run` catches every impossible combination before any training.

    objective           mcl_dist/objectives/__init__.py   REGISTRY      (classes: Objective.check)
    train.engine        mcl_dist/training/engine.py                ENGINES       (classes: .check)
    train.optimizer     mcl_dist/training/optim.py                 OPTIMIZERS
    train.lr_scheduler  mcl_dist/training/lr_schedule.py           SCHEDULERS
    cluster.backend     mcl_dist/clustering/kmeans.py                BACKENDS
    cluster.k_rule      mcl_dist/clustering/auto_k.py                K_RULES       (stages.N.k: auto)
    data.dataset_type   mcl_dist/data/dataset_types.py    CHOICES       (classes: TrainData.check)
    model.integration_weights  mcl_dist/integration/integrated_model.py   WEIGHTINGS
    eval.metrics        mcl_dist/eval/metric_registry.py         METRICS       (a list: eval.registry.validate)
    train.report_to     mcl_dist/training/loggers.py             REPORTERS     (a list: reporting.parse_report_to)
"""
from __future__ import annotations

from mcl_dist.clustering.auto_k import K_RULES
from mcl_dist.clustering.kmeans import BACKENDS
from mcl_dist.config.origins import blame
from mcl_dist.config.registry import unknown_choice
from mcl_dist.config.schema import Config
from mcl_dist.data.dataset_types import CHOICES as DATASET_TYPES
from mcl_dist.eval import metric_registry as eval_registry
from mcl_dist.integration.integrated_model import WEIGHTINGS
from mcl_dist.objectives import REGISTRY as OBJECTIVES
from mcl_dist.training.engine import ENGINES
from mcl_dist.training.loggers import parse_report_to
from mcl_dist.training.lr_schedule import SCHEDULERS
from mcl_dist.training.optim import OPTIMIZERS

REGISTRIES = {"objective": OBJECTIVES, "train.engine": ENGINES, "train.optimizer": OPTIMIZERS,
              "train.lr_scheduler": SCHEDULERS, "cluster.backend": BACKENDS, "cluster.k_rule": K_RULES,
              "model.integration_weights": WEIGHTINGS, "data.dataset_type": DATASET_TYPES}


def chosen(cfg: Config, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def check_choices(cfg: Config, where: str) -> None:
    """Each named choice exists, then each chosen entry checks the settings it depends on."""
    for key, registry in REGISTRIES.items():
        if chosen(cfg, key) not in registry:
            raise unknown_choice(key, chosen(cfg, key), registry, blame(where, key))
    for key, registry in REGISTRIES.items():
        registry[chosen(cfg, key)].check(cfg, where)
    eval_registry.validate(cfg, where, captions=OBJECTIVES[cfg.objective].captions)
    parse_report_to(cfg.train.report_to, blame(where, "train.report_to"))
