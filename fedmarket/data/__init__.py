"""Local data: loaders for common formats and partitioners for simulated federations."""

from fedmarket.data.dataset import Dataset
from fedmarket.data.loaders import load_csv, load_digits, load_idx, load_image_folder, load_npz
from fedmarket.data.partition import Partition, dirichlet_partition, iid_partition
from fedmarket.data.source import DataKind, DataSource

__all__ = [
    "DataKind",
    "DataSource",
    "Dataset",
    "Partition",
    "dirichlet_partition",
    "iid_partition",
    "load_csv",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_npz",
]
