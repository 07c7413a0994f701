"""A serialisable description of where data comes from, so apps can load it themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from fedmarket.data import loaders
from fedmarket.data.dataset import Dataset
from fedmarket.exceptions import InvalidInput

DataKind = Literal["digits", "csv", "npz", "idx", "images"]


@dataclass(frozen=True)
class DataSource:
    """What to load. ``path`` is unused for ``digits``; ``labels_path`` only for ``idx``."""

    kind: DataKind = "digits"
    path: str = ""
    label_column: str = "label"
    labels_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in get_args(DataKind):
            raise InvalidInput(
                f"unknown data kind {self.kind!r}; choose one of {', '.join(get_args(DataKind))}"
            )
        if self.kind != "digits" and not self.path:
            raise InvalidInput(f"data kind {self.kind!r} needs a path")
        if self.kind == "idx" and not self.labels_path:
            raise InvalidInput("data kind 'idx' needs labels_path (the IDX label file)")

    def load(self) -> Dataset:
        path = Path(self.path)
        match self.kind:
            case "digits":
                return loaders.load_digits()
            case "csv":
                return loaders.load_csv(path, label_column=self.label_column)
            case "npz":
                return loaders.load_npz(path)
            case "idx":
                return loaders.load_idx(path, Path(self.labels_path))
            case "images":
                return loaders.load_image_folder(path)
