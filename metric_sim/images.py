"""Images as items: where an image comes from, its content id, and one way to open it.

An image item is any of

* a **location** string or :class:`pathlib.Path`: a file path, or a member of a zip
  archive written ``ARCHIVE.zip!/member/path.png`` (the ``!/`` separator of jar URLs), so
  collections shipped as zips are read in place, never unpacked;
* the encoded file's ``bytes``;
* a decoded ``PIL.Image.Image`` or a ``numpy`` array (``H x W`` grey, ``H x W x 3`` RGB,
  ``H x W x 4`` RGBA; uint8, or floats in ``[0, 1]``).

:func:`open_image` turns any of them into a PIL image of the mode an encoder needs,
applies the EXIF orientation (phone photos are often stored sideways with a tag that
says so), composites transparency on white, and fully decodes the pixels, so a missing,
truncated or non-image file fails here with a :class:`~metric_sim.errors.DataError`
(or :class:`~metric_sim.errors.MissingFileError`) that names the file, the zip member
and the row or field given as ``where``, never later inside a batch.

:func:`image_id` is the content id: ``"i" + sha1(file bytes)`` for locations and bytes
(so the same photo under two names is one item), ``"p" + sha1(mode, size, pixels)`` for
decoded images. PIL is imported only when an image is opened.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sim.errors import (
    DataError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "ZIP_SEPARATOR",
    "IMAGE_FIELD",
    "describe_image",
    "describe_record",
    "image_id",
    "is_image_item",
    "iter_zip_images",
    "open_image",
    "read_image_bytes",
    "record_id",
    "split_zip_location",
    "zip_location",
]

ZIP_SEPARATOR = "!/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MODES = ("RGB", "L")
_ID_DIGITS = 16

# One open ZipFile per archive and thread: reopening a zip per image would re-read its
# central directory thousands of times; ZipFile objects are not safe to share across threads.
_zip_cache = threading.local()


def zip_location(archive: str | os.PathLike[str], member: str) -> str:
    """The location string of ``member`` inside ``archive``."""
    return f"{os.fspath(archive)}{ZIP_SEPARATOR}{member}"


def split_zip_location(location: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(archive, member)`` for a ``ARCHIVE.zip!/member`` location, else ``None``."""
    text = os.fspath(location)
    archive, sep, member = text.partition(ZIP_SEPARATOR)
    if not sep or not archive.lower().endswith(".zip"):
        return None
    return Path(archive), member


def _open_zip(archive: Path) -> zipfile.ZipFile:
    cache: dict[Path, zipfile.ZipFile] = getattr(_zip_cache, "archives", None) or {}
    _zip_cache.archives = cache
    handle = cache.get(archive)
    if handle is None:
        if not archive.is_file():
            raise MissingFileError(f"zip archive not found: {archive}")
        try:
            handle = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{archive}: not a readable zip archive ({exc})") from exc
        cache[archive] = handle
    return handle


def _where(where: str | None) -> str:
    return f"{where}: " if where else ""


def read_image_bytes(location: str | os.PathLike[str], *, where: str | None = None) -> bytes:
    """The bytes of an image file or zip member; a clear error naming it when it is missing."""
    parts = split_zip_location(location)
    if parts is not None:
        archive, member = parts
        handle = _open_zip(archive)
        try:
            return handle.read(member)
        except KeyError:
            raise MissingFileError(f"{_where(where)}{archive} has no member {member!r}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{_where(where)}{archive}: member {member!r} cannot be read ({exc})") from exc
    path = Path(location)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{_where(where)}image file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{_where(where)}{path} is a folder, not an image file") from None
    except OSError as exc:
        raise DataError(f"{_where(where)}cannot read image file {path}: {exc}") from exc


def iter_zip_images(archive: str | os.PathLike[str]) -> Iterator[str]:
    """Locations of the image members of a zip, in sorted member order (hidden files skipped)."""
    handle = _open_zip(Path(archive))
    for name in sorted(handle.namelist()):
        base = name.rsplit("/", 1)[-1]
        if name.endswith("/") or base.startswith(".") or "__MACOSX/" in name:
            continue
        if base.lower().endswith(IMAGE_SUFFIXES):
            yield zip_location(archive, name)


def is_image_item(item: Any) -> bool:
    """Whether ``item`` is one of the image forms :func:`open_image` takes (a str counts as a location)."""
    if isinstance(item, (str, Path, bytes, bytearray, np.ndarray)):
        return True
    return type(item).__module__.startswith("PIL.")


def _decode(data: bytes, label: str) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, naming the file
    except UnidentifiedImageError:
        raise DataError(f"{label}: not an image file (no image format recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{label}: the image cannot be decoded ({exc})") from exc
    return ImageOps.exif_transpose(image)


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    from PIL import Image

    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidArgumentError(f"{label}: an image array must be H x W, H x W x 1, 3 or 4, got shape {array.shape}")
    if array.size == 0:
        raise InvalidArgumentError(f"{label}: an empty image array (shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidArgumentError(f"{label}: a float image array must hold values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise InvalidArgumentTypeError(f"{label}: an image array must be uint8, bool or float in [0, 1], got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.ndim if array.ndim == 2 else array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    from PIL import Image

    if image.mode == mode:
        return image
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels would otherwise keep whatever colour they hide: put them on white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grey: scale to 8 bits by the image's own range rather than clipping at 255.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image.convert(mode)


def open_image(item: Any, *, mode: str = "RGB", where: str | None = None) -> Image.Image:
    """``item`` (any image form, see the module docstring) as a decoded PIL image in ``mode``.

    EXIF orientation is applied to encoded files; ``where`` (``"train.tsv row 12, column
    image_a"``) prefixes every error.
    """
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(item, (str, Path)):
        label = f"{_where(where)}{os.fspath(item)}"
        image = _decode(read_image_bytes(item, where=where), label)
    elif isinstance(item, (bytes, bytearray)):
        image = _decode(bytes(item), f"{_where(where)}<{len(item)} bytes>")
    elif isinstance(item, np.ndarray):
        image = _from_array(item, where or "image array")
    elif type(item).__module__.startswith("PIL."):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(item)
        image.load()
    else:
        raise InvalidArgumentTypeError(
            f"{where or 'item'}: an image must be a file path, a zip location, bytes, a PIL image or a numpy "
            f"array, got {type(item).__name__}"
        )
    return _convert(image, mode)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:_ID_DIGITS]


def image_id(item: Any, *, where: str | None = None) -> str:
    """Content id of an image: the file's bytes for locations and bytes, the pixels for decoded images."""
    if isinstance(item, (str, Path)):
        return "i" + _sha1(read_image_bytes(item, where=where))
    if isinstance(item, (bytes, bytearray)):
        return "i" + _sha1(bytes(item))
    if isinstance(item, np.ndarray):
        from metric_sim.items import item_id

        return item_id(item)
    if type(item).__module__.startswith("PIL."):
        header = f"{item.mode}|{item.size}|".encode()
        return "p" + _sha1(header + item.tobytes())
    raise InvalidArgumentTypeError(f"{where or 'item'}: not an image: {type(item).__name__}")


def describe_image(item: Any) -> str:
    """What an index stores for an image: its location, or a short summary of in-memory pixels."""
    if isinstance(item, (str, Path)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray)):
        return f"<image {len(item)} bytes sha1:{_sha1(bytes(item))}>"
    if isinstance(item, np.ndarray):
        return f"<image array {'x'.join(map(str, item.shape))} {item.dtype} {image_id(item)}>"
    if type(item).__module__.startswith("PIL."):
        return f"<image {item.size[0]}x{item.size[1]} {item.mode} {image_id(item)}>"
    raise InvalidArgumentTypeError(f"not an image: {type(item).__name__}")


#: The record field that holds an image; every other field is text or plain JSON data.
IMAGE_FIELD = "image"


def _record_with(record: Any, image_form: Any) -> dict[str, Any]:
    from collections.abc import Mapping

    if not isinstance(record, Mapping):
        raise InvalidArgumentTypeError(f"a record must be a mapping of field names to values, got {type(record).__name__}")
    return {key: (image_form(value) if key == IMAGE_FIELD and value is not None else value)
            for key, value in record.items()}


def record_id(record: Any, *, where: str | None = None, known_image_id: str | None = None) -> str:
    """Content id of a record: its canonical JSON with the image replaced by the image's content id.

    ``known_image_id`` is the image's id when the caller has it already (no second read of the file).
    """
    from metric_sim.items import describe_item

    def image_form(image: Any) -> str:
        return known_image_id if known_image_id is not None else image_id(image, where=where)

    canonical = describe_item(_record_with(record, image_form))
    return "r" + _sha1(canonical.encode("utf-8", "surrogatepass"))


def describe_record(record: Any) -> str:
    """Canonical JSON of a record (sorted keys), the image as :func:`describe_image` gives it."""
    from metric_sim.items import describe_item

    return describe_item(_record_with(record, describe_image))
