import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedmarket.data import DataSource, load_csv, load_digits, load_idx, load_image_folder, load_npz
from fedmarket.exceptions import DataError, InvalidInput


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_digits_is_bundled_and_scaled() -> None:
    data = load_digits()
    assert len(data) == 1797
    assert data.num_classes == 10
    assert data.feature_shape == (1, 8, 8)
    assert data.features.min() >= 0.0
    assert data.features.max() <= 1.0


def test_csv_reads_features_and_chosen_label_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,kind,b\n1,cat,2\n3,dog,4\n5,cat,6\n")
    data = load_csv(path, label_column="kind")
    assert data.features.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert data.classes == ("cat", "dog")
    assert data.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "no label column 'label'"),
        ("a,label\n1,x\nnot-a-number,y\n", r"bad.csv:3: a feature value is not a number"),
        ("a,label\n1,x\n2\n", "fields"),
        ("", "empty CSV"),
        ("a,label\n1,x\nnan,y\n", "NaN"),
    ],
)
def test_corrupt_csv_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_csv(path, label_column="label")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_csv(tmp_path / "absent.csv", label_column="label")


def test_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(12, dtype=np.float64).reshape(4, 3), y=np.array([3, 1, 3, 2]))
    data = load_npz(path)
    assert data.features.dtype == np.float32
    assert data.features.shape == (4, 3)
    assert data.classes == ("1", "2", "3")
    assert data.labels.tolist() == [2, 0, 2, 1]


def test_npz_corrupt_missing_key_and_pickle_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DataError, match="corrupt NPZ"):
        load_npz(corrupt)
    missing = tmp_path / "missing.npz"
    np.savez(missing, x=np.zeros((2, 2)))
    with pytest.raises(DataError, match="missing array"):
        load_npz(missing)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError):
        load_npz(pickled)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path: Path, compress: bool) -> None:
    images = np.arange(3 * 4 * 4).reshape(3, 4, 4) % 256
    write_idx(tmp_path / "img.idx", images, compress=compress)
    write_idx(tmp_path / "lab.idx", np.array([7, 1, 7]), compress=compress)
    data = load_idx(tmp_path / "img.idx", tmp_path / "lab.idx")
    assert data.feature_shape == (1, 4, 4)
    assert np.allclose(data.features[1, 0], images[1] / 255.0)
    assert data.classes == ("1", "7")
    assert data.labels.tolist() == [1, 0, 1]


def test_idx_truncated_bad_magic_and_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "img.idx", np.zeros((3, 2, 2)))
    truncated = tmp_path / "trunc.idx"
    truncated.write_bytes((tmp_path / "img.idx").read_bytes()[:-1])
    with pytest.raises(DataError, match="header promises"):
        load_idx(truncated, truncated)
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="magic"):
        load_idx(bad_magic, bad_magic)
    write_idx(tmp_path / "lab.idx", np.array([1, 2]))
    with pytest.raises(DataError, match="3 items"):
        load_idx(tmp_path / "img.idx", tmp_path / "lab.idx")


def test_image_folder_and_corrupt_image(tmp_path: Path) -> None:
    for label, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 12), (value, value, value)).save(tmp_path / label / f"{i}.png")
    data = load_image_folder(tmp_path, size=(6, 6))
    assert data.feature_shape == (1, 6, 6)
    assert data.classes == ("cats", "dogs")
    assert data.features[data.labels == 1].min() == pytest.approx(1.0)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(tmp_path)


def test_data_source_validates_eagerly() -> None:
    with pytest.raises(InvalidInput, match="unknown data kind"):
        DataSource(kind="parquet")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="needs a path"):
        DataSource(kind="csv")
