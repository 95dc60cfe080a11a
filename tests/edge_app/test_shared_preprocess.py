"""The frozen preprocessing spec and the safe image decoder."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge_app.errors import ImageError, UsageError
from edge_app.imageio import load_image
from edge_app.preprocess import PreprocessSpec, preprocess_image


def _img(w=64, h=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["squash", "shorter_crop", "letterbox"])
def test_preprocess_shape_and_range(mode: str) -> None:
    spec = PreprocessSpec(size=(24, 40), resize=mode, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = preprocess_image(_img(), spec)
    assert x.shape == (3, 24, 40) and x.dtype == np.float32
    assert -1.0 - 1e-6 <= x.min() and x.max() <= 1.0 + 1e-6
    assert preprocess_image(_img(), spec, layout="NHWC").shape == (24, 40, 3)


def test_spec_round_trips_and_rejects_bad_options() -> None:
    spec = PreprocessSpec(size=(160, 160), resize="shorter_crop", interpolation="bicubic")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UsageError):
        PreprocessSpec(resize="stretch")
    with pytest.raises(UsageError):
        PreprocessSpec(std=(0.0, 1.0, 1.0))


def test_normalisation_matches_formula() -> None:
    spec = PreprocessSpec(size=(8, 8), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    img = Image.new("RGB", (8, 8), (255, 127, 0))
    x = preprocess_image(img, spec, layout="NHWC")
    np.testing.assert_allclose(x[0, 0], [(255 - 127) / 128, 0.0, -127 / 128], atol=1e-6)


def test_exif_rotation_is_applied(tmp_path) -> None:
    img = _img(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    assert load_image(p).size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16", "LA", "1"])
def test_odd_modes_decode_to_rgb(tmp_path, mode: str) -> None:
    base = _img(32, 32)
    img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 256) if mode == "I;16" \
        else base.convert(mode)
    p = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (32, 32)
    if mode == "I;16":
        assert np.asarray(out).max() > 100  # 16-bit scaled down, not clipped to black


def test_bad_files_give_clear_errors(tmp_path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    buf = io.BytesIO()
    _img(200, 200).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    for name, msg in [("zero.jpg", "empty"), ("junk.jpg", "not a recognised"), ("missing.jpg", "no such file"),
                      ("cut.jpg", "truncated")]:
        with pytest.raises(ImageError, match=msg) as ei:
            load_image(tmp_path / name)
        assert name in str(ei.value)


def test_decompression_bomb_is_refused(tmp_path) -> None:
    p = tmp_path / "bomb.png"
    Image.new("L", (10000, 10000)).save(p, optimize=True)  # ~100 MP, tiny file
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(p)


def test_draft_mode_decodes_big_jpeg_small(tmp_path) -> None:
    p = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(p, quality=80)
    out = load_image(p, draft_size=(448, 448))
    assert out.size[0] < 1100 and out.size[1] >= 448


def test_size_limits_folders_bytes_and_streams(tmp_path) -> None:
    """The limits a caller sets are the limits applied, for files, raw bytes and open streams alike."""
    buf = io.BytesIO()
    _img(100, 80).save(buf, "JPEG")
    data = buf.getvalue()
    (tmp_path / "ok.jpg").write_bytes(data)
    with pytest.raises(ImageError, match="over the 100 byte limit"):
        load_image(tmp_path / "ok.jpg", max_bytes=100)  # a huge file is refused before it is read
    with pytest.raises(ImageError, match="over the 100 byte limit"):
        load_image(data, max_bytes=100)
    with pytest.raises(ImageError, match="empty image data"):
        load_image(b"")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="8000 pixels is over the 1000 limit"):
        load_image(tmp_path / "ok.jpg", max_pixels=1000)  # our own limit, below Pillow's bomb check
    assert load_image(data).size == (100, 80)
    with open(tmp_path / "ok.jpg", "rb") as fh:
        assert load_image(fh).size == (100, 80)
        assert not fh.closed  # a caller's stream stays the caller's to close


def test_an_image_that_cannot_be_opened_is_an_image_error(tmp_path, monkeypatch) -> None:
    import edge_app.imageio as imageio

    p = tmp_path / "locked.jpg"
    Image.new("RGB", (8, 8)).save(p)

    def denied(*a, **k):  # no read permission (root in CI reads everything, so it is simulated)
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(imageio, "open", denied, raising=False)
    with pytest.raises(ImageError, match="locked.jpg: cannot be opened \\(Permission denied\\)"):
        load_image(p)
