"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST splits.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files into
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

References:
    LeCun et al., the IDX format of the MNIST database; Xiao et al., "Fashion-MNIST",
    arXiv:1708.07747 (classes and file names).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np

from mmembed.data.errors import DatasetFormatError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "load_fashion_mnist", "read_idx"]

#: Where the Debian package ``dataset-fashion-mnist`` puts the files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
#: Class names in label order (0-9), as in the dataset's README.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type codes -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped, detected from its first bytes).

    The header is two zero bytes, a type code, the number of dimensions and one big-endian
    uint32 per dimension; the data follow in C order.

    Args:
        path: The ``.idx*`` or ``.idx*.gz`` file.

    Returns:
        The array, in native byte order.

    Raises:
        DatasetFormatError: If the file is missing, the header is not IDX, or the data size
            does not match the header.

    Shapes:
        -> the dimensions stored in the header, e.g. (60000, 28, 28) for images, (60000,) for labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path}: not an IDX file (header bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: IDX header says {ndim} dimensions but the file is {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says shape {shape} ({expected} data bytes) but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(
    root: str | Path = FASHION_MNIST_ROOT, split: Literal["train", "test"] = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from its IDX files (``.gz`` or unpacked).

    Args:
        root: Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``train`` (60,000 images) or ``test`` (10,000).

    Returns:
        ``(images, labels)``: uint8 grey images and int64 labels in 0-9 (see
        :data:`FASHION_MNIST_CLASSES`).

    Raises:
        DatasetFormatError: If a file is missing (with the install hint) or malformed, or the
            images and labels disagree.

    Shapes:
        -> images (N, 28, 28), labels (N,).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root)
    files = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [root / f"{prefix}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DatasetFormatError(
                f"{candidates[0]} not found (nor the unpacked file). Install the Debian package with "
                f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_ROOT}), or point "
                "root at a folder holding the four Fashion-MNIST IDX files."
            )
        files.append(found)
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFormatError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DatasetFormatError(f"{files[1]}: labels outside 0-9")
    return images.astype(np.uint8), labels.astype(np.int64)
