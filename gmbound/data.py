"""Datasets and loaders: MNIST, Fashion-MNIST, CIFAR-10, SVHN and a bundled MNIST subset.

Every dataset yields ``(image, label)`` with ``image`` a float32 tensor ``[C, H, W]`` in [0, 1]
and ``label`` an int, like torchvision with ``ToTensor()``. Nothing is normalised here: models
carry a ``Normalize`` layer (``DATASET_INFO[name].mean/std``) so that the certified box stays in
pixel space, where ``x_min``/``x_max`` clip it.

Offline use is first-class. MNIST-style IDX files are read directly, gzipped or not, and CIFAR-10
batches are unpickled by us, so a copy whose checksums differ from torchvision's (re-compressed,
re-packaged) still loads, with a warning. torchvision is used only to download, and for SVHN.
"""

from __future__ import annotations

import gzip
import pickle
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset


@dataclass(frozen=True)
class DatasetInfo:
    """Input shape, class count, per-channel pixel statistics and the pixel domain."""

    channels: int
    size: int
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_min: float = 0.0
    x_max: float = 1.0


# Per-channel statistics of the training sets, pixels in [0, 1]. MNIST and Fashion-MNIST were
# recomputed here from the full training sets; CIFAR-10 is the true per-channel std (the
# often-quoted (0.2023, 0.1994, 0.2010), which CROWN-IBP uses, is not the dataset's std); SVHN
# is the commonly quoted value (also CROWN-IBP's), not recomputed here.
_MNIST = DatasetInfo(1, 28, 10, (0.1307,), (0.3081,))
DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": _MNIST,
    "fashion-mnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": DatasetInfo(3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    # The bundled subset uses full-MNIST statistics so models move between the two unchanged.
    "embedded-mnist": _MNIST,
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASET_INFO)

# Names people commonly type, mapped to ours.
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar": "cifar10",
            "cifar-10": "cifar10", "embedded": "embedded-mnist", "mnist-5k": "embedded-mnist"}


def canonical_name(name: str) -> str:
    """Our name for dataset ``name`` (case, ``_`` and a few aliases forgiven)."""
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return key


class DataError(ValueError):
    """A data file that exists but cannot be used (corrupt, truncated, inconsistent); names the file."""


class ImageDataset(Dataset):
    """uint8 images ``[n, C, H, W]`` served as float32 in [0, 1], with int labels.

    Keeping uint8 in memory is 4x smaller than float; the conversion per item is cheap.
    ``transform`` (e.g. random crops for augmentation) acts on the float image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [n, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.data = images
        self.targets = targets.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.data[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# ----------------------------------------------------------------------------------- IDX files

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped, into a native-endian array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
        try:  # gzip checks its CRC-32 and length trailer, so a flipped bit or a cut is caught here
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header cut short ({len(raw)} bytes, the {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise DataError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} payload bytes) "
                        f"but the payload has {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision's layout


def _idx_stems(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx(data_dir: Path, name: str, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in torchvision's raw folder ``<data_dir>/<Folder>/raw``.

    No looser search (say, directly in ``data_dir``): MNIST and Fashion-MNIST share file
    names, and silently training on the wrong one is worse than a clear error.
    """
    folder = data_dir / _IDX_FOLDERS[name] / "raw"
    for file in (folder / stem, folder / f"{stem}.gz"):
        if file.is_file():
            return file
    return None


def _idx_missing_message(data_dir: Path, name: str, train: bool) -> str:
    raw = data_dir / _IDX_FOLDERS[name] / "raw"
    files = "\n".join(f"  {raw / stem}  (or {stem}.gz)" for stem in _idx_stems(train))
    split = "training" if train else "test"
    return (f"{name} {split} split not found. Expected these IDX files:\n{files}\n"
            f"Gzipped .gz files are read directly (no need to gunzip). A folder that holds "
            f"the four files (e.g. Debian's /usr/share/datasets/fashion-mnist) can be linked in: "
            f"ln -s <that folder> {raw}. Or pass download=True (needs internet).")


def _load_idx_dataset(name: str, data_dir: Path, train: bool, download: bool) -> ImageDataset:
    stems = _idx_stems(train)
    paths = [_find_idx(data_dir, name, s) for s in stems]
    if None in paths and download:
        from torchvision import datasets as tvd

        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        try:  # downloads and unpacks into <data_dir>/<Folder>/raw, which _find_idx searches
            cls(str(data_dir), train=train, download=True)
        except (RuntimeError, OSError) as err:
            raise FileNotFoundError(f"download failed ({err}).\n"
                                    + _idx_missing_message(data_dir, name, train)) from err
        paths = [_find_idx(data_dir, name, s) for s in stems]
    if None in paths:
        raise FileNotFoundError(_idx_missing_message(data_dir, name, train))
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{paths[0]} and {paths[1]}: expected images [n, H, W] and labels [n], "
                        f"got shapes {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    size = DATASET_INFO[name].size
    if images.shape[1:] != (size, size):
        raise DataError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, {name} needs {size}x{size}")
    _check_labels(labels, DATASET_INFO[name].n_classes, str(paths[1]))
    return ImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))


# ------------------------------------------------------------------------------------ CIFAR-10

def _load_cifar10(data_dir: Path, train: bool, download: bool) -> ImageDataset:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py`` layout, unpickled by us.

    torchvision refuses files whose md5 differs from the official archive's; we only warn, so
    re-packaged copies (and small synthetic test folders) load. Like torchvision we unpickle
    the batches: only point this at files you trust.
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = data_dir / CIFAR10.base_folder
    entries = CIFAR10.train_list if train else CIFAR10.test_list
    paths = [folder / file for file, _ in entries]
    if download and not all(p.is_file() for p in paths):
        try:
            CIFAR10(str(data_dir), train=train, download=True)
        except (RuntimeError, OSError) as err:
            raise FileNotFoundError(f"CIFAR-10 download failed ({err}); expected files in "
                                    f"{folder}") from err
    missing = [p for p in paths if not p.is_file()]
    if missing:
        listing = "\n".join(f"  {p}" for p in paths)
        raise FileNotFoundError(
            f"cifar10 {'training' if train else 'test'} split not found. Expected these pickled "
            f"batches (torchvision's layout, from cifar-10-python.tar.gz unpacked in "
            f"{data_dir}):\n{listing}\nMissing: {', '.join(p.name for p in missing)}. "
            f"Or pass download=True (needs internet).")
    bad = [p.name for p, (_, md5) in zip(paths, entries) if not check_integrity(str(p), md5)]
    if bad:
        warnings.warn(f"CIFAR-10 files {bad} in {folder} do not match torchvision's md5 "
                      f"checksums; reading them anyway", stacklevel=3)
    images, labels = [], []
    for p in paths:
        try:
            with open(p, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data, lab = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch["labels"], dtype=np.int64)
            images.append(data.reshape(-1, 3, 32, 32))
        except Exception as err:  # noqa: BLE001 - any unpickling or layout failure: name the file
            raise DataError(f"{p}: not a readable CIFAR-10 batch ({type(err).__name__}: {err})") from None
        if len(images[-1]) != len(lab):
            raise DataError(f"{p}: {len(images[-1])} images but {len(lab)} labels")
        _check_labels(lab, 10, str(p))
        labels.append(lab)
    return ImageDataset(torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(labels)))


def _check_labels(labels: np.ndarray, n_classes: int, source: str) -> None:
    """Labels must be class indices ``0 .. n_classes - 1``: checked at load, not mid-training."""
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise DataError(f"{source}: {len(bad)} label(s) outside 0..{n_classes - 1} (e.g. {int(bad[0])})")


# ---------------------------------------------------------------------------------------- SVHN

def _load_svhn(data_dir: Path, train: bool, download: bool) -> ImageDataset:
    """SVHN through torchvision (which reads the .mat files with scipy and checks md5)."""
    from torchvision.datasets import SVHN

    split = "train" if train else "test"
    file = data_dir / SVHN.split_list[split][1]
    try:
        ds = SVHN(str(data_dir), split=split, download=download)
    except RuntimeError as err:
        state = "does not match torchvision's md5" if file.is_file() else "is missing"
        raise FileNotFoundError(
            f"svhn {split} split: {file} {state}. Put the official {file.name} there, "
            f"or pass download=True (needs internet).") from err
    # torchvision already maps label 10 to digit 0 and stores images as [n, 3, 32, 32].
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(ds.data)),
                        torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)))


# ------------------------------------------------------------------------------ embedded MNIST

EMBEDDED_MNIST_FILE = "embedded_mnist.npz"


def _load_embedded_mnist(train: bool) -> ImageDataset:
    """The bundled MNIST subset (gmbound/datasets/README.md): 4,000 train, 1,000 test images."""
    split = "train" if train else "test"
    # importlib.resources finds package data in a source tree, an installed wheel or a zip.
    with resources.files("gmbound.datasets").joinpath(EMBEDDED_MNIST_FILE).open("rb") as f:
        with np.load(f) as npz:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    return ImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))


# ------------------------------------------------------------------------------------- public

def load_dataset(
    name: str, data_dir: str | Path | None = None, train: bool = True, download: bool = False
) -> Dataset:
    """The ``train`` or test split of dataset ``name`` (see ``DATASET_NAMES``).

    ``data_dir`` follows torchvision's layouts (``<data_dir>/MNIST/raw/...``,
    ``<data_dir>/FashionMNIST/raw/...``, ``<data_dir>/cifar-10-batches-py/...``,
    ``<data_dir>/train_32x32.mat``); ``embedded-mnist`` needs none. Missing files raise
    ``FileNotFoundError`` naming exactly what must be where.
    """
    key = canonical_name(name)
    if key == "embedded-mnist":
        return _load_embedded_mnist(train)
    if data_dir is None:
        raise ValueError(f"dataset {key!r} needs a data_dir")
    root = Path(data_dir).expanduser()
    if key in _IDX_FOLDERS:
        return _load_idx_dataset(key, root, train, download)
    if key == "cifar10":
        return _load_cifar10(root, train, download)
    return _load_svhn(root, train, download)


def _augmentation(key: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """CROWN-IBP's training augmentation: random crop (pad 4), plus flips for CIFAR-10 only
    (flipping digits would change their meaning)."""
    if key not in ("cifar10", "svhn"):
        return None
    from torchvision import transforms

    steps: list[Callable] = [transforms.RandomCrop(32, padding=4)]
    if key == "cifar10":
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps)


def _first(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items (all if ``n`` is None), as CROWN-IBP's ``num_examples`` does."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if n < 1:
        raise ValueError(f"subset size must be positive, got {n}")
    return Subset(dataset, range(n))


def make_loaders(
    name: str,
    data_dir: str | Path | None,
    batch_size: int,
    download: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    test_batch_size: int | None = None,
    augment: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` for dataset ``name``.

    The training loader shuffles with its own generator seeded by ``seed``, so the batch order
    is reproducible regardless of other uses of the global RNG. ``train_subset`` and
    ``test_subset`` keep the first n items. ``augment`` turns on CROWN-IBP's training
    augmentation for CIFAR-10 / SVHN (its randomness comes from torch's global RNG, or the
    workers' seeds, which the generator also fixes).
    """
    key = canonical_name(name)
    train_set = load_dataset(key, data_dir, train=True, download=download)
    test_set = load_dataset(key, data_dir, train=False, download=download)
    if augment and isinstance(train_set, ImageDataset):
        train_set.transform = _augmentation(key)
    generator = torch.Generator()
    generator.manual_seed(seed)
    pin = torch.cuda.is_available()  # faster host-to-GPU copies; pointless without a GPU
    train_loader = DataLoader(_first(train_set, train_subset), batch_size=batch_size, shuffle=True,
                              generator=generator, num_workers=num_workers, pin_memory=pin)
    test_loader = DataLoader(_first(test_set, test_subset),
                             batch_size=test_batch_size or batch_size, shuffle=False,
                             num_workers=num_workers, pin_memory=pin)
    return train_loader, test_loader
