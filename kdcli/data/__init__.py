"""Datasets (a registry), κ subsets and augmentation."""

from kdcli.data.base import Dataset, Split
from kdcli.data.registry import build_dataset, dataset_from_description, dataset_names
from kdcli.data.subsets import Subset, kappa_subset

__all__ = ["Dataset", "Split", "Subset", "build_dataset", "dataset_from_description", "dataset_names", "kappa_subset"]
