"""Datasets, transforms, class palettes and dataset download."""
