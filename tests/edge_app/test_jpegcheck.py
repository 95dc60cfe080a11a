"""JPEGs cut short decoded into flat grey pictures without a word (a half-copied photo, an end marker after the
cut, or a header claiming 8900x8900 over 3 kB). A file too small for the picture it declares is refused
everywhere; grey rows at the bottom are refused where the tablet stores a new photo, and said elsewhere (a whole
picture on a #808080 backdrop looks the same)."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app import jpegcheck
from edge_app.errors import ImageError
from edge_app.imageio import load_image

EOI = b"\xff\xd9"


def _photo(w: int = 640, h: int = 480, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (np.sin(x / 17.0) * 60 + np.cos(y / 11.0) * 60 + 128)[..., None] + rng.normal(0, 20, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    return img.convert(mode)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("draft", [None, (224, 224)])
@pytest.mark.parametrize("share", [0.3, 0.6, 0.9])
def test_baseline_jpeg_cut_with_an_end_marker_is_refused_as_a_new_photo(tmp_path, mode, draft, share,
                                                                         caplog) -> None:
    data = _jpeg(_photo(mode=mode), quality=90)
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: int(len(data) * share)] + EOI)
    with pytest.raises(ImageError, match=r"may be cut short: the last \d+% of its rows decode as flat grey") as ei:
        load_image(p, draft_size=draft, strict_tail=True)
    assert "half.jpg" in str(ei.value) and "copy it again or take the photo again" in str(ei.value)
    load_image(data, draft_size=draft, strict_tail=True)  # the whole file decodes
    with caplog.at_level("WARNING"):
        load_image(p, draft_size=draft)  # elsewhere: decoded, and said
    assert "half.jpg may be cut short" in caplog.text


def test_the_tablet_refuses_a_cut_photo_when_it_is_stored(tmp_path) -> None:
    from edge_app.captures import CaptureStore

    data = _jpeg(_photo(), quality=90)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + EOI)
    store = CaptureStore(tmp_path / "captures")
    with pytest.raises(ImageError, match="cut.jpg: may be cut short"):
        store.add_file(tmp_path / "cut.jpg")
    assert not list((tmp_path / "captures").glob("*.jpg"))


def test_a_whole_picture_on_a_mid_grey_backdrop_is_decoded(tmp_path, caplog) -> None:
    """An audit: a render of a part on #808080 was refused as cut short; at the hub, where the old code had stored
    it, the next `set-bundle` stopped on it and the fleet kept the old model."""
    from PIL import ImageDraw

    img = Image.new("RGB", (640, 480), (128, 128, 128))
    ImageDraw.Draw(img).ellipse((100, 50, 500, 250), fill=(200, 30, 30))
    data = _jpeg(img, quality=92)
    with caplog.at_level("WARNING"):
        out = load_image(data, draft_size=(224, 224))
    assert out.size[0] >= 224 and "mid-grey backdrop" in caplog.text


def test_cut_without_an_end_marker_is_still_refused_as_truncated(tmp_path) -> None:
    data = _jpeg(_photo(), quality=90)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_header_claiming_a_huge_picture_over_little_data_is_refused_before_decoding() -> None:
    whole = _jpeg(Image.new("RGB", (8900, 8900), (90, 90, 90)), quality=50)
    cut = whole[:3000] + EOI
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"cut short: the file holds 3002 bytes, fewer than any complete "
                                         r"8900x8900 JPEG needs \(\d+\)"):
        load_image(cut, draft_size=(224, 224))
    assert time.perf_counter() - t0 < 0.5  # refused from the header, nothing decoded


@pytest.mark.parametrize("kw", [dict(quality=1, optimize=True), dict(quality=1, optimize=True, progressive=True),
                                dict(quality=95, subsampling=0), dict(quality=5, subsampling=2)])
def test_the_smallest_whole_files_pass_the_size_bound(kw) -> None:
    """A flat picture with optimised Huffman tables is as small as a whole JPEG gets: the bound never refuses it
    (measured here: it holds several times the bound's bytes)."""
    for colour in [(255, 255, 255), (0, 0, 0), (60, 60, 60)]:
        data = _jpeg(Image.new("RGB", (3000, 2000), colour), **kw)
        assert jpegcheck.too_short(io.BytesIO(data)) is None
        size, need = len(data), 3000 * 2000 // 64 // 8
        assert size > need  # the premise of the bound, for this encoder
        out = load_image(data, draft_size=(224, 224))
        assert np.asarray(out).std() < 2


def test_a_photo_with_a_grey_but_not_exactly_mid_grey_bottom_passes() -> None:
    img = _photo()
    arr = np.asarray(img).copy()
    arr[-120:] = 129
    load_image(_jpeg(Image.fromarray(arr), quality=95))


def test_the_bound_reads_frames_after_big_exif_and_icc_segments_and_at_a_stream_offset() -> None:
    img = _photo(320, 240)
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: a 60 kB APP1 segment before the frame
    data = _jpeg(img, quality=90, exif=exif.tobytes(), icc_profile=b"\0" * 50000)
    cut = data[: len(data) - 30000] + EOI  # the headers make up most of the file: the bound is not enough
    assert jpegcheck.too_short(io.BytesIO(cut)) is None
    with pytest.raises(ImageError, match="may be cut short"):
        load_image(cut, strict_tail=True)
    prefixed = io.BytesIO(b"junk" * 10 + _jpeg(img)[:5000] + EOI)
    prefixed.seek(40)
    frame = jpegcheck._frame(prefixed, 40)
    assert frame is not None and frame[1:3] == (320, 240) and frame[0] == 0xC0


def test_only_huffman_frames_are_bounded() -> None:
    data = bytearray(_jpeg(Image.new("RGB", (8900, 8900)), quality=50)[:3000] + EOI)
    i = data.index(b"\xff\xc0")
    data[i + 1] = 0xC9  # arithmetic-coded frame: a flat picture can take almost no bytes there
    assert jpegcheck.too_short(io.BytesIO(bytes(data))) is None


def test_grey_tail_counts_exact_mid_grey_rows_only() -> None:
    arr = np.full((40, 30, 3), 128, np.uint8)
    arr[:25] = 7
    assert jpegcheck.grey_tail_rows(Image.fromarray(arr)) == 15
    arr[-1, -1, 2] = 127
    assert jpegcheck.grey_tail_rows(Image.fromarray(arr)) == 0
    assert jpegcheck.grey_tail_rows(Image.fromarray(np.full((9, 4), 128, np.uint8), "L")) == 9


def test_a_picture_that_is_all_mid_grey_is_refused_as_empty() -> None:
    """What a JPEG with no scan data at all decodes to; a blank grey picture is refused the same way (nothing in it
    to identify), with a message that names both."""
    data = _jpeg(Image.new("RGB", (320, 240), (127, 127, 127)), quality=1)  # quantised to exactly 128
    with pytest.raises(ImageError, match="flat grey picture .* with nothing in it: its data is missing"):
        load_image(data, strict_tail=True)


def test_a_cut_photo_the_camera_wrote_is_refused_when_adopted(tmp_path) -> None:
    """A review: the camera path (`adopt`) had no test of the check."""
    from edge_app.captures import CaptureStore

    store = CaptureStore(tmp_path / "captures")
    cid, path = store.camera_path()
    data = _jpeg(_photo(), quality=90)
    Path(path).write_bytes(data[: len(data) // 2] + EOI)
    with pytest.raises(ImageError, match="may be cut short"):
        store.adopt(cid, path)
    cid2, path2 = store.camera_path()
    Path(path2).write_bytes(data)
    assert store.adopt(cid2, path2).capture_id == cid2
