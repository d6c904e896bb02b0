"""Image items (metric_sim/images.py): every source opens the same pixels, content ids, and clear errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from metric_sim.errors import (
    DataError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.images import (
    describe_image,
    describe_record,
    image_id,
    is_image_item,
    iter_zip_images,
    open_image,
    read_image_bytes,
    record_id,
    split_zip_location,
    zip_location,
)


def _pixels(seed: int = 0, size: tuple[int, int] = (12, 9)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def files(tmp_path):
    array = _pixels()
    png = tmp_path / "a.png"
    png.write_bytes(_png_bytes(array))
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("top/person1/b.png", _png_bytes(array))
        z.writestr("top/person1/.hidden.png", b"x")
        z.writestr("top/person2/c.png", _png_bytes(_pixels(1)))
        z.writestr("top/readme.txt", "not an image")
    return array, png, archive


def test_every_source_gives_the_same_pixels(files):
    array, png, archive = files
    member = zip_location(archive, "top/person1/b.png")
    sources = [png, str(png), member, png.read_bytes(), Image.fromarray(array), array, array / 255.0]
    for source in sources:
        image = open_image(source)
        assert image.mode == "RGB" and image.size == (12, 9)
        np.testing.assert_array_equal(np.asarray(image), array)
    grey = open_image(png, mode="L")
    assert grey.mode == "L" and np.asarray(grey).shape == (9, 12)


def test_content_ids_follow_bytes_not_names(files, tmp_path):
    array, png, archive = files
    copy = tmp_path / "renamed.png"
    copy.write_bytes(png.read_bytes())
    member = zip_location(archive, "top/person1/b.png")
    assert image_id(png) == image_id(copy) == image_id(member) == image_id(png.read_bytes())
    assert image_id(zip_location(archive, "top/person2/c.png")) != image_id(png)
    assert image_id(png).startswith("i") and image_id(Image.fromarray(array)).startswith("p")
    assert image_id(Image.fromarray(array)) == image_id(open_image(png))


def test_zip_members_listed_in_order_without_hidden_or_non_images(files):
    _, _, archive = files
    members = [split_zip_location(loc)[1] for loc in iter_zip_images(archive)]
    assert members == ["top/person1/b.png", "top/person2/c.png"]
    assert split_zip_location("plain/path.png") is None


def test_errors_name_the_file_and_where(files, tmp_path):
    _, png, archive = files
    with pytest.raises(MissingFileError, match=r"pairs.tsv row 3: image file not found: .*nope.png"):
        open_image(tmp_path / "nope.png", where="pairs.tsv row 3")
    with pytest.raises(MissingFileError, match="has no member 'top/missing.png'"):
        read_image_bytes(zip_location(archive, "top/missing.png"))
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(DataError, match=r"fake.png: not an image file"):
        open_image(fake)
    truncated = tmp_path / "cut.jpg"
    buffer = io.BytesIO()
    Image.fromarray(_pixels(size=(64, 64))).save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(DataError, match=r"cut.jpg: the image cannot be decoded"):
        open_image(truncated)
    with pytest.raises(DataError, match="is a folder"):
        open_image(tmp_path)
    with pytest.raises(InvalidArgumentError, match="shape"):
        open_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        open_image(np.full((4, 4), 2.0))
    with pytest.raises(InvalidArgumentTypeError, match="got int"):
        open_image(3)
    with pytest.raises(InvalidArgumentError, match="mode"):
        open_image(png, mode="CMYK")


def test_exif_orientation_and_transparency(tmp_path):
    photo = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_pixels(size=(20, 10))).save(photo, format="JPEG", exif=exif)
    assert open_image(photo).size == (10, 20)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent: must come out white, not red
    assert np.asarray(open_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    grey = np.asarray(open_image(path, mode="L"))
    assert grey.min() == 0 and grey.max() == 255 and grey[1, 0] > 100


def test_records_ids_and_descriptions(files, tmp_path):
    _, png, _ = files
    copy = tmp_path / "again.png"
    copy.write_bytes(png.read_bytes())
    a = {"title": "Golden apple", "image": str(png)}
    assert record_id(a) == record_id({"image": copy, "title": "Golden apple"})  # content, not the path
    assert record_id(a) != record_id({"title": "Golden apple"}) != record_id({"title": "Red apple"})
    assert describe_record(a) == f'{{"image":"{png}","title":"Golden apple"}}'
    assert describe_image(png) == str(png)
    assert is_image_item(png) and is_image_item(Image.new("L", (2, 2))) and not is_image_item(3)
    with pytest.raises(InvalidArgumentTypeError, match="mapping"):
        record_id(["title"])
