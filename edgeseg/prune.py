"""Compatibility re-exports: pruning now lives in the edgeseg.pruning package (rules.py, core.py, stage.py,
config.py). New code imports from there."""

from edgeseg.arch_spec import architecture_spec, build_from_spec, is_attention  # noqa: F401
from edgeseg.pruning.config import IMPORTANCES, PruneConfig  # noqa: F401
from edgeseg.pruning.core import GradientBatch, PruneReport, accumulate_gradients, prune_model  # noqa: F401
from edgeseg.pruning.rules import (PruneError, attention_projections, classifier_layers,  # noqa: F401
                                   fixed_width_layers, resolve_layer_names, sync_attention_sizes)
from edgeseg.pruning.stage import measure_latency_side_by_side, prune, taylor_batches  # noqa: F401
