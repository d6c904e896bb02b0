"""Items as JSON, and the library items they stand for.

A text is a JSON string. An image is ``{"image_base64": "<base64 of the encoded file>"}``,
decoded in memory to ``bytes`` (its size and pixel count checked from the header before
the pixels are decoded, then fully decoded once so a broken file is refused here, naming
the field). A product record is ``{"title", "image_base64", "description"}`` (any subset
with a title or an image), given to the encoder as ``{"title", "image": bytes,
"description"}``. Which forms are accepted depends on the model's encoder kind; a text
model takes strings only. A string is never taken as a server-side path.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from metric_sim.serve.config import Limits
from metric_sim.serve.errors import ApiError, invalid, limit_exceeded

__all__ = ["IMAGE_KINDS", "RECORD_KINDS", "ItemParser", "check_unicode", "item_form"]

IMAGE_KINDS = frozenset({"image"})
RECORD_KINDS = frozenset({"multimodal"})
IMAGE_KEY = "image_base64"
RECORD_KEYS = ("title", IMAGE_KEY, "description")


def item_form(encoder_kind: str) -> str:
    """``"text"``, ``"image"`` or ``"record"``: what JSON items a model of this encoder kind takes."""
    if encoder_kind in IMAGE_KINDS:
        return "image"
    if encoder_kind in RECORD_KINDS:
        return "record"
    return "text"


def check_unicode(value: str, field: str) -> None:
    """422 for a string JSON can carry but UTF-8 cannot (a lone surrogate such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(field, f"{field} holds a lone surrogate at character {exc.start}: not valid Unicode text",
                      "invalid_text") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class ItemParser:
    """Checks JSON items against the model's item form and the limits, and converts them."""

    def __init__(self, form: str, limits: Limits) -> None:
        if form not in ("text", "image", "record"):
            raise ValueError(f"form must be text, image or record, got {form!r}")
        self.form = form
        self.limits = limits

    @property
    def decodes_images(self) -> bool:
        """Whether parsing may decode images (slow enough to run off the event loop)."""
        return self.form != "text"

    def check_count(self, values: Any, field: str) -> list[Any]:
        """``values`` as a non-empty list of at most ``max_items`` entries."""
        if not isinstance(values, list):
            raise invalid(field, f"{field} must be an array, got {_json_type(values)}", "invalid_type")
        if not values:
            raise invalid(field, f"{field} must not be empty")
        if len(values) > self.limits.max_items:
            raise limit_exceeded(field, "the number of entries", self.limits.max_items, len(values))
        return values

    def parse_many(self, values: Any, field: str) -> list[Any]:
        values = self.check_count(values, field)
        return [self.parse(value, f"{field}[{i}]") for i, value in enumerate(values)]

    def parse_each(self, located: list[tuple[Any, str]]) -> list[Any]:
        """The library item of each ``(JSON item, its field path)``."""
        return [self.parse(value, field) for value, field in located]

    def parse(self, value: Any, field: str) -> Any:
        """The library item for one JSON item (a str, bytes or a record dict)."""
        if self.form == "text":
            return self._text(value, field)
        if self.form == "image":
            if not isinstance(value, dict):
                raise invalid(field, f"this model takes images: {field} must be an object "
                                     f'{{"{IMAGE_KEY}": "..."}}, got {_json_type(value)}', "invalid_type")
            self._only_keys(value, (IMAGE_KEY,), field)
            if IMAGE_KEY not in value:
                raise invalid(f"{field}.{IMAGE_KEY}", f"{field} needs {IMAGE_KEY} (the base64 of the image file)")
            return self._image(value[IMAGE_KEY], f"{field}.{IMAGE_KEY}")
        return self._record(value, field)

    def _text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise invalid(field, f"this model takes texts: {field} must be a string, got {_json_type(value)}",
                          "invalid_type")
        if len(value) > self.limits.max_text_chars:
            raise limit_exceeded(field, "the text length in characters", self.limits.max_text_chars, len(value))
        check_unicode(value, field)
        return value

    def _only_keys(self, value: dict[str, Any], allowed: tuple[str, ...], field: str) -> None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            hint = " (images are sent as image_base64; the server never opens paths)" if "image" in unknown else ""
            raise invalid(f"{field}.{unknown[0]}", f"{field} has unknown field(s) {unknown}; "
                                                   f"allowed: {list(allowed)}{hint}")

    def _record(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise invalid(field, f"this model takes product records: {field} must be an object with title, "
                                 f"{IMAGE_KEY} and/or description, got {_json_type(value)}", "invalid_type")
        self._only_keys(value, RECORD_KEYS, field)
        record: dict[str, Any] = {}
        for key in ("title", "description"):
            if value.get(key) is not None:
                record[key] = self._text(value[key], f"{field}.{key}")
        if value.get(IMAGE_KEY) is not None:
            record["image"] = self._image(value[IMAGE_KEY], f"{field}.{IMAGE_KEY}")
        if not (record.get("title") or "").strip() and "image" not in record:
            raise invalid(field, f"{field} needs a non-empty title or an {IMAGE_KEY}")
        return record

    def _image(self, value: Any, field: str) -> bytes:
        if not isinstance(value, str):
            raise invalid(field, f"{field} must be a base64 string, got {_json_type(value)}", "invalid_type")
        limit = self.limits.max_image_bytes
        estimate = len(value) * 3 // 4
        if estimate > limit + 3:  # before decoding: the base64 text alone says the size to 2 bytes
            raise limit_exceeded(field, "the image size in bytes", limit, estimate)
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(field, f"{field} is not valid base64", "invalid_image") from None
        if len(data) > limit:
            raise limit_exceeded(field, "the image size in bytes", limit, len(data))
        if not data:
            raise invalid(field, f"{field} is empty", "invalid_image")
        self._check_pixels(data, field)
        return data

    def _check_pixels(self, data: bytes, field: str) -> None:
        import warnings

        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    pixels = image.size[0] * image.size[1]
                    if pixels > self.limits.max_image_pixels:
                        raise limit_exceeded(field, "the image size in pixels", self.limits.max_image_pixels, pixels)
                    image.load()  # a truncated or broken file fails here, not inside a shared batch
        except ApiError:
            raise
        except Image.DecompressionBombError:  # PIL refuses before our check (far over any sane limit)
            raise ApiError(413, "limit_exceeded", f"{field}: the image size in pixels is over the limit of "
                                                  f"{self.limits.max_image_pixels}", field) from None
        except UnidentifiedImageError:
            raise invalid(field, f"{field} is not an image file (no image format recognised)", "invalid_image") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise invalid(field, f"{field}: the image cannot be decoded ({exc})", "invalid_image") from None
