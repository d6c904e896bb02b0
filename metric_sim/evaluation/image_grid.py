"""A PNG grid of queries and their nearest stored items, to look at what a model retrieves.

One row per query: the query, then its neighbours, each captioned with the distance and the
calibrated probability; when the truth is known a right match gets a green frame and a
``✓``, a wrong one a red frame, a red ``x`` in its corner and a ``✗``. An item is any image
form :func:`metric_sim.images.open_image` takes, or a product record (a Mapping, or its JSON
string) shown as its image captioned with its title (a blank tile with the title when the
record has no image).

The grid is composed pixel for pixel with PIL and drawn on one full-figure matplotlib axes
(Agg canvas, no pyplot state) for the text, so the PNG is exactly ``columns x cell`` wide
and ``title + rows x cell`` high. PIL and matplotlib are imported when a grid is drawn.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.images import IMAGE_FIELD, open_image
from metric_sim.storage import atomic_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["GRID_COLOURS", "plot_neighbour_grid"]

GRID_COLOURS = {"right": (30, 150, 60), "wrong": (215, 25, 25), "unknown": (170, 170, 170), "query": (60, 60, 60)}
_DPI = 100
_PAD = 4  # pixels around each tile
_FONT_PT = 7.0
_LINE_PX = 12  # one caption line at _FONT_PT and _DPI, with leading
_CAPTION_LINES = 2
_TITLE_PX = 26
_BLANK = (236, 236, 236)


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidArgumentError(f"path must name a .png file, got {os.fspath(path)!r}")
    if path.is_dir():
        raise InvalidArgumentError(f"path {os.fspath(path)!r} is a folder; give the .png file to write")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidArgumentError(f"path {os.fspath(path)!r}: {os.fspath(ancestor)!r} is a file, not a folder")
    return path


def _as_record(item: Any, where: str) -> Mapping[str, Any] | None:
    """The record ``item`` holds (a Mapping or a JSON object string), or None for an image item."""
    if isinstance(item, Mapping):
        record = item
    elif isinstance(item, str) and item.lstrip().startswith("{"):
        try:
            record = json.loads(item)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{where}: a string starting with '{{' must be a JSON record ({exc})") from None
        if not isinstance(record, Mapping):
            raise InvalidArgumentError(f"{where}: a JSON record must be an object, got {type(record).__name__}")
    else:
        return None
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise InvalidArgumentTypeError(f"{where}: a record's title must be a str, got {type(title).__name__}")
    if record.get(IMAGE_FIELD) is None and not title:
        raise InvalidArgumentError(f"{where}: a record needs an image or a title, got fields {sorted(record)}")
    return record


def _tile(item: Any, size: int, where: str) -> tuple[Image.Image, str | None, str | None]:
    """(RGB tile of ``size`` x ``size``, caption title or None, title to write ON a blank tile or None)."""
    from PIL import Image, ImageOps

    record = _as_record(item, where)
    title = record.get("title") if record is not None else None
    image_item = record.get(IMAGE_FIELD) if record is not None else item
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    if image_item is None:
        tile.paste(_BLANK, (0, 0, size, size))
        return tile, None, title
    picture = ImageOps.contain(open_image(image_item, mode="RGB", where=where), (size, size))
    tile.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    return tile, title, None


def _frame(tile: Image.Image, colour: tuple[int, int, int], width: int, *, cross: bool = False) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, tile.width - 1, tile.height - 1), outline=colour, width=width)
    if cross:  # a red x in the top-right corner, visible even where captions are cut
        arm = max(6, tile.width // 6)
        x0, y0 = tile.width - width - arm - 2, width + 2
        draw.line((x0, y0, x0 + arm, y0 + arm), fill=colour, width=max(2, width // 2 + 1))
        draw.line((x0, y0 + arm, x0 + arm, y0), fill=colour, width=max(2, width // 2 + 1))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _neighbours(row: Any, i: int) -> tuple[Any, list[tuple[Any, float, float | None, bool | None]]]:
    if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) != 2:
        raise InvalidArgumentError(f"rows[{i}] must be a pair (query_item, neighbours), got {type(row).__name__}")
    query, entries = row
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise InvalidArgumentError(f"rows[{i}][1] must be a list of (item, distance, probability, correct), got {type(entries).__name__}")
    out = []
    for j, entry in enumerate(entries):
        name = f"rows[{i}][1][{j}]"
        if not isinstance(entry, Sequence) or isinstance(entry, (str, bytes)) or len(entry) != 4:
            raise InvalidArgumentError(f"{name} must be (item, distance, probability, correct), got {entry!r:.80}")
        item, distance, probability, correct = entry
        distance = _number(distance, f"{name} distance")
        if probability is not None:
            probability = _number(probability, f"{name} probability")
            if not 0.0 <= probability <= 1.0:
                raise InvalidArgumentError(f"{name} probability must be in [0, 1] or None, got {probability!r}")
        if correct is not None and not isinstance(correct, (bool, np.bool_)):
            raise InvalidArgumentError(f"{name} correct must be True, False or None, got {correct!r}")
        out.append((item, distance, probability, None if correct is None else bool(correct)))
    return query, out


def _shorten(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: max(1, chars - 1)] + "…"


def plot_neighbour_grid(
    rows: Sequence[tuple[Any, Sequence[tuple[Any, float, float | None, bool | None]]]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    thumb_size: int = 96,
) -> Path:
    """Draw ``rows`` (one ``(query_item, [(neighbour_item, distance, probability, correct), ...])``
    per query) into the PNG ``path`` atomically; returns the path.

    ``probability`` may be None (no calibrator) and ``correct`` None (truth unknown: grey
    frame, no mark). Rows may have different numbers of neighbours; the grid has as many
    columns as the longest row plus one (the query). Each cell is ``thumb_size + 8`` pixels
    wide and ``thumb_size + 8 + 24`` high (two caption lines); a title adds 26 pixels on top.
    """
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, (int, np.integer)) or not 16 <= thumb_size <= 1024:
        raise InvalidArgumentError(f"thumb_size must be an integer in [16, 1024] pixels, got {thumb_size!r}")
    if title is not None and not isinstance(title, str):
        raise InvalidArgumentTypeError(f"title must be a str or None, got {type(title).__name__}")
    target = _check_path(path)
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise InvalidArgumentTypeError(f"rows must be a list of (query_item, neighbours), got {type(rows).__name__}")
    if len(rows) == 0:
        raise InvalidArgumentError("rows is empty: there is no query to draw")
    parsed = [_neighbours(row, i) for i, row in enumerate(rows)]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    size = int(thumb_size)
    columns = 1 + max(len(entries) for _, entries in parsed)
    cell_w, cell_h = size + 2 * _PAD, size + 2 * _PAD + _CAPTION_LINES * _LINE_PX
    top = _TITLE_PX if title else 0
    width, height = columns * cell_w, top + len(parsed) * cell_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    border = max(3, size // 20)
    chars = max(4, int(size / (0.55 * _FONT_PT * _DPI / 72)))
    texts: list[tuple[float, float, str, tuple[int, int, int], str]] = []  # x, y, text, colour, placement

    for r, (query, entries) in enumerate(parsed):
        cells = [(query, 0.0, None, None)] + entries
        for c, (item, distance, probability, correct) in enumerate(cells):
            where = f"rows[{r}][0] (query)" if c == 0 else f"rows[{r}][1][{c - 1}] item"
            tile, caption_title, blank_title = _tile(item, size, where)
            if c == 0:
                colour, line = GRID_COLOURS["query"], "query"
                _frame(tile, colour, 2)
            else:
                colour = GRID_COLOURS[{True: "right", False: "wrong", None: "unknown"}[correct]]
                _frame(tile, colour, border if correct is not None else 1, cross=correct is False)
                mark = {True: "✓ ", False: "✗ ", None: ""}[correct]
                line = f"{mark}d={distance:.3g}" + ("" if probability is None else f" p={probability:.2f}")
            x, y = c * cell_w + _PAD, top + r * cell_h + _PAD
            canvas.paste(tile, (x, y))
            caption_colour = colour if c > 0 and correct is not None else (0, 0, 0)
            texts.append((x, y + size + 2, _shorten(line, chars), caption_colour, "caption"))
            if caption_title:
                texts.append((x, y + size + 2 + _LINE_PX, _shorten(caption_title, chars), (0, 0, 0), "caption"))
            if blank_title:
                lines = textwrap.wrap(blank_title, width=chars)[: max(1, (size - 8) // _LINE_PX)]
                texts.append((x + size / 2, y + size / 2, "\n".join(lines), (0, 0, 0), "centre"))

    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.imshow(np.asarray(canvas), interpolation="nearest", aspect="auto")
    axes.set_axis_off()
    for x, y, text, colour, placement in texts:
        rgb = tuple(v / 255 for v in colour)
        if placement == "centre":
            axes.text(x, y, text, ha="center", va="center", fontsize=_FONT_PT, color=rgb, clip_on=True, linespacing=1.1)
        else:
            axes.text(x, y, text, ha="left", va="top", fontsize=_FONT_PT, color=rgb, clip_on=True)
    if title:
        axes.text(width / 2, _TITLE_PX / 2, title, ha="center", va="center", fontsize=10, clip_on=True)
    with atomic_file(target) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return target
