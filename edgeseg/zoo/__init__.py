"""Model zoo: a registry of segmentation architectures, their weights and preprocessing contracts."""

from edgeseg.zoo.registry import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
