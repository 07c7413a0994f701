"""Loaders for the data formats a device may hold. Each returns a :class:`Dataset`."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmarket.data.dataset import Dataset, encode_labels
from fedmarket.data.idx import read_idx
from fedmarket.exceptions import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

    Ships inside scikit-learn, so it needs no download.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    features = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(features, labels, tuple(str(i) for i in range(10)), "digits")


def load_csv(path: Path, *, label_column: str) -> Dataset:
    """A CSV file with a header row; ``label_column`` names the label, all other columns
    must be numeric features."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"cannot read CSV file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty CSV file (a header row is required)")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if label_column not in header:
        raise DataError(
            f"{path}: no label column {label_column!r}; columns are {', '.join(header)}"
        )
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column besides the label")
    label_at = header.index(label_column)
    features = np.empty((len(body), len(header) - 1), dtype=np.float32)
    raw_labels: list[str] = []
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
        raw_labels.append(row[label_at].strip())
        values = row[:label_at] + row[label_at + 1 :]
        try:
            features[line_no - 2] = [float(v) for v in values]
        except ValueError:
            raise DataError(f"{path}:{line_no}: a feature value is not a number") from None
    labels, classes = encode_labels(np.asarray(raw_labels), str(path))
    return Dataset(features, labels, classes, path.name)


def load_npz(path: Path, *, features_key: str = "x", labels_key: str = "y") -> Dataset:
    """A NumPy ``.npz`` archive with a feature array and a label array (pickle disabled)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (features_key, labels_key) if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; archive holds "
                    f"{', '.join(archive.files) or 'nothing'}"
                )
            features, raw_labels = archive[features_key], archive[labels_key]
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read NPZ file {path}: {exc}") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: corrupt NPZ archive ({exc})") from None
    if not np.issubdtype(features.dtype, np.number):
        raise DataError(f"{path}: array {features_key!r} must be numeric")
    labels, classes = encode_labels(raw_labels.reshape(-1), str(path))
    return Dataset(_as_float(features), labels, classes, path.name)


def load_idx(images: Path, labels: Path) -> Dataset:
    """MNIST-format IDX image and label files; pixels scaled to [0, 1] when stored as bytes."""
    pixels, raw_labels = read_idx(images), read_idx(labels)
    if raw_labels.ndim != 1:
        raise DataError(f"{labels}: label file must be one-dimensional")
    if pixels.shape[0] != raw_labels.shape[0]:
        raise DataError(
            f"{images} has {pixels.shape[0]} items but {labels} has {raw_labels.shape[0]}"
        )
    features = _as_float(pixels)
    if pixels.dtype == np.dtype(">u1"):
        features /= 255.0
    if features.ndim == 3:
        features = features[:, None, :, :]
    labels_, classes = encode_labels(raw_labels, str(labels))
    return Dataset(features, labels_, classes, images.name)


def load_image_folder(root: Path, *, size: tuple[int, int] = (28, 28)) -> Dataset:
    """One sub-folder per class holding image files; images become grayscale ``size``."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders")
    images: list[NDArray[np.float32]] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    gray = image.convert("L").resize(size)
                    images.append(np.asarray(gray, dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{file}: not a readable image ({exc})") from None
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Dataset(
        np.stack(images)[:, None, :, :],
        np.asarray(labels, dtype=np.int64),
        tuple(d.name for d in class_dirs),
        root.name,
    )


def _as_float(array: NDArray[np.generic]) -> NDArray[np.float32]:
    return np.array(array, dtype=np.float32)
