"""Pruning, split like Torch-Pruning's dependency / importance / algorithms:

  rules.py   which layers keep their outputs (the zoo entry's classifier, --ignore) and the architecture fixes
             the trace cannot see (SegFormer's efficient attention, attention head sizes)
  core.py    prune_model: Torch-Pruning's DependencyGraph and pruner on a model in memory; PruneReport
  stage.py   prune: load, prune, time, evaluate, 2:4 sparsity, fine-tune, save the checkpoint and its report
  config.py  PruneConfig
"""

from edgeseg.pruning.config import IMPORTANCES, PruneConfig
from edgeseg.pruning.core import PruneReport, prune_model
from edgeseg.pruning.rules import PruneError
from edgeseg.pruning.stage import prune

__all__ = ["IMPORTANCES", "PruneConfig", "PruneError", "PruneReport", "prune", "prune_model"]
