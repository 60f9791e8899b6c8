"""The user's own images: a folder of PNGs, an ``.npy``/``.npz`` array of images, MNIST-style IDX.

Every loader returns a :class:`~genmodels.data.dataset.Dataset` whose ``train`` holds the
images flattened to vectors, with the shape recorded so that families and metrics can
reshape them:

- ``image_shape`` is ``(h, w)`` for grayscale and ``(h, w, c)`` for colour (c = 3 RGB or
  4 RGBA); the flattening is row-major in that order (channels last, as PNG, NumPy and IDX
  store them). :func:`as_images` gives the ``(n, c, h, w)`` tensor a convolutional network
  wants, :func:`flatten_images` goes back.
- ``levels`` is 256 for 8-bit images (uint8 arrays, 8-bit PNGs, ubyte IDX files): ``train``
  then holds the integers 0…255 as floats and the models see them uniformly dequantized,
  y = (x + u) / 256 with u ~ U[0, 1)^d, the protocol of the bundled digits (17 levels,
  benchmarks.md §4). Non-uint8 arrays are continuous data (``levels=None``), as before.

Sources:

- **folder of PNGs**: every ``*.png`` directly in the folder (sorted by name; subfolders are
  not searched), all of one size. Grayscale files (modes L, 1, LA, P with a grey palette) give
  ``(h, w)``; if any file is colour, all become RGB (grey replicated, lossless). Alpha is
  dropped (LA→L, RGBA→RGB) unless every file has it, then it is kept as a 4th channel.
  16-bit and float PNGs are refused (only 8-bit images have a fixed level count here).
- **arrays** (``.npy``, ``.npz``, via :func:`dataset_from_array`): ``(n, h, w)`` or
  ``(n, h, w, c)`` with c ∈ {1, 3, 4} (c = 1 is squeezed to grayscale).
- **IDX** (LeCun's MNIST format, :func:`read_idx`): magic ``00 00 <type> <ndim>`` then ndim
  big-endian uint32 sizes and the big-endian data; 0x00000803 is ubyte images (n, h, w),
  0x00000801 ubyte labels (n,). Files may be gzipped (detected by their magic bytes, not the
  name). A labels file is not a data set: loading one is an error that says so.

Bad input raises :class:`~genmodels.data.dataset.DataError` with one line naming the file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from genmodels.data.dataset import DataError, Dataset, validate_array

__all__ = [
    "IMAGE_LEVELS",
    "as_images",
    "dataset_from_array",
    "flatten_images",
    "is_image_source",
    "load_idx",
    "load_images",
    "load_png_folder",
    "read_idx",
]

#: Grey levels of an 8-bit image.
IMAGE_LEVELS = 256

#: IDX type byte → big-endian NumPy dtype (LeCun et al., the MNIST database's file format).
_IDX_TYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
def is_image_source(path: Path) -> bool:
    """True for what :func:`load_images` reads: a folder, a ``.png`` file (refused there with
    a hint), or an IDX file (by name: ``*ubyte*``, ``*idx*``, ``.gz``; or by its magic bytes)."""
    path = Path(path)
    if path.is_dir():
        return True
    name = path.name.lower()
    if path.suffix.lower() in {".npy", ".npz", ".csv"}:
        return False
    if path.suffix.lower() == ".png":
        return True
    if "ubyte" in name or "idx" in name or path.suffix.lower() == ".gz":
        return True
    return path.is_file() and _has_idx_magic(path)


def load_images(path: str | Path) -> Dataset:
    """A :class:`Dataset` from a folder of PNGs or an IDX file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return load_png_folder(path)
    if path.suffix.lower() == ".png":
        raise DataError(f"{path}: a single image; give the folder that holds the .png images")
    return load_idx(path)


# ---------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------
def dataset_from_array(array: np.ndarray, name: str, source: str) -> Dataset:
    """A Dataset from a validated array: ``(n, d)`` vectors, ``(n, h, w)`` or ``(n, h, w, c)``
    images (flattened, shape kept in ``image_shape``); uint8 images get ``levels=256``."""
    array = validate_array(array, source)
    image_shape: tuple[int, ...] | None = None
    levels: int | None = None
    if array.ndim == 4:
        c = int(array.shape[3])
        if c not in (1, 3, 4):
            hint = " (channels first? store them as (n, h, w, c))" if array.shape[1] in (1, 3, 4) else ""
            raise DataError(
                f"{source}: images (n, h, w, c) need c = 1, 3 or 4 channels, got shape "
                f"{tuple(array.shape)}{hint}"
            )
        if c == 1:
            array = array[..., 0]
    if array.ndim >= 3:
        image_shape = tuple(int(s) for s in array.shape[1:])
        if array.dtype == np.uint8:
            levels = IMAGE_LEVELS
        array = array.reshape(array.shape[0], -1)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return Dataset(
        name=name,
        dim=int(x.shape[1]),
        train=x,
        levels=levels,
        image_shape=image_shape,  # type: ignore[arg-type]
        source=source,
    )


def as_images(x: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Flattened images ``(n, h·w[·c])`` → ``(n, c, h, w)`` (c = 1 for grayscale)."""
    if len(image_shape) == 2:
        h, w = image_shape
        return x.reshape(x.shape[0], 1, h, w)
    if len(image_shape) == 3:
        h, w, c = image_shape
        return x.reshape(x.shape[0], h, w, c).permute(0, 3, 1, 2)
    raise ValueError(f"image_shape must be (h, w) or (h, w, c), got {image_shape!r}")


def flatten_images(images: torch.Tensor) -> torch.Tensor:
    """``(n, c, h, w)`` → the Dataset's flattened layout ``(n, h·w·c)`` (channels last;
    c = 1 gives ``(n, h·w)``), the inverse of :func:`as_images`."""
    if images.ndim != 4:
        raise ValueError(f"expected images (n, c, h, w), got shape {tuple(images.shape)}")
    return images.permute(0, 2, 3, 1).reshape(images.shape[0], -1)


# ---------------------------------------------------------------------------------------
# PNG folders
# ---------------------------------------------------------------------------------------
def load_png_folder(folder: str | Path) -> Dataset:
    """Every ``*.png`` directly in ``folder`` (sorted by name), all of one size, 8-bit."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise DataError(f"{folder}: no .png files in the folder (subfolders are not searched)")
    planes: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    first = files[0]
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                im_size = im.size
                array = _png_array(im, f)
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise DataError(f"{f}: unreadable image ({err})") from None
        if size is None:
            size = im_size
        elif im_size != size:
            raise DataError(
                f"{f}: size {im_size[0]}×{im_size[1]} (w×h) differs from {size[0]}×{size[1]} of "
                f"{first.name}; all images must have one size"
            )
        planes.append(array)
    channels = {a.shape[2] if a.ndim == 3 else 1 for a in planes}
    if len(channels) > 1:  # grey and colour, or alpha in some files only: all RGB
        planes = [_to_rgb(a) for a in planes]
    return dataset_from_array(np.stack(planes), name=folder.name, source=str(folder))


def _png_array(im, path: Path) -> np.ndarray:
    """An 8-bit PIL image → uint8 (h, w) for grey, (h, w, 3|4) for colour."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise DataError(f"{path}: {mode} image ({'float' if mode == 'F' else '16-bit'}); only 8-bit images")
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        rgb = im.convert("RGBA" if "transparency" in im.info else "RGB")
        a = np.asarray(rgb)
        if a.shape[2] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            return np.ascontiguousarray(a[..., 0])
        im = rgb
    elif mode == "LA":
        im = im.convert("L")
    elif mode not in ("L", "RGB", "RGBA"):
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: image mode {mode} cannot be read as 8-bit ({err})") from None
    return np.asarray(im, dtype=np.uint8).copy()


def _to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    return a[..., :3]


# ---------------------------------------------------------------------------------------
# IDX (MNIST) files
# ---------------------------------------------------------------------------------------
def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: unreadable gzip file ({err})") from None
    return raw


def _has_idx_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            if head[:2] == _GZIP_MAGIC:
                with gzip.open(path, "rb") as gz:
                    head = gz.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES and 1 <= head[3] <= 4


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), shape as the header says.

    Header: two zero bytes, a type byte (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then one big-endian uint32 per
    dimension; the data follow big-endian in row-major order. The size must match exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = _open_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"{path}: not an IDX file (magic {raw[:4].hex() or 'missing'}; expected 0000 <type> <ndim>, "
            "e.g. 00000803 for ubyte images)"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX data has {len(raw) - header} bytes, the header {tuple(shape)} of {dtype.name} "
            f"needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(path: str | Path) -> Dataset:
    """A Dataset from an IDX images file (n, h, w) (or vectors (n, d)); ubyte → 256 levels."""
    path = Path(path)
    array = read_idx(path)
    if array.ndim == 1:
        raise DataError(
            f"{path}: a 1-D IDX file ({array.shape[0]} labels), not images; "
            "give the images file (magic 0x00000803)"
        )
    name = path.name.split(".")[0]
    return dataset_from_array(array, name=name, source=str(path))
