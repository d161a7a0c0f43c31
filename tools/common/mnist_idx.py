"""Read and write MNIST IDX files (optionally gzip-compressed) with numpy only.

Shared by the other tool scripts (`train_mnist.py`, `make_fixtures.py`,
`crosscheck.py`); not meant to be run on its own. Works under both the Debian
`/usr/bin/python3` (numpy 1.24) and the pyenv `python3` (numpy 2.x).

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian 4-byte magic
`0x000008TT` where `0x08` is the unsigned-byte type code and `TT` the number of
dimensions, then one big-endian uint32 per dimension, then the raw bytes.
Images are `0x00000803` [N, 28, 28]; labels are `0x00000801` [N].
"""

import gzip
import struct

import numpy as np

MNIST_DIR = "../shared/datasets/mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _open(path, mode):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_idx(path):
    """Return the uint8 array stored in an IDX(.gz) file."""
    with _open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data, dims {dims} need {int(np.prod(dims))}")
    return body.reshape(dims)


def idx_bytes(array):
    """Serialise a uint8 array as IDX bytes (magic 0x000008<ndim>, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def write_idx_gz(path, array):
    """Write `array` as a gzip-compressed IDX file, byte-for-byte reproducible (mtime 0)."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(idx_bytes(array))


def load_split(split, directory=MNIST_DIR, limit=None):
    """Return (images uint8 [N,28,28], labels uint8 [N]) of the `train` or `test` split."""
    images_name, labels_name = FILES[split]
    images = read_idx(f"{directory}/{images_name}")
    labels = read_idx(f"{directory}/{labels_name}")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def to_nchw_float(images):
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0, 1] (pixels / 255, no mean/std)."""
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
