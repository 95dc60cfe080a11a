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
    # what a signed manifest may still hold: each was a traceback, a 30 GB allocation or all-zero inputs
    for bad, match in ((dict(size=(100000, 100000)), "8..4096"), (dict(size=(96.5, 96.5)), "whole numbers"),
                       (dict(size=(True, 224)), "whole numbers"), (dict(mean=(0.5, 0.5)), "3 finite numbers"),
                       (dict(std=(float("inf"),) * 3), "3 finite numbers"), (dict(mean=(float("nan"),) * 3), "finite"),
                       (dict(pad_value=100000), "grey level"), (dict(crop_fraction=float("nan")), "crop_fraction")):
        with pytest.raises(UsageError, match=match):
            PreprocessSpec.from_dict({**spec.to_dict(), **bad})


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


# -- found by an audit with adversarial images (17th session) -------------------------------------------------
def _peak_mb(code: str) -> float:
    """Peak RSS growth (MB) of a fresh interpreter running ``code`` after importing the decoder."""
    import subprocess
    import sys

    prog = ("import resource, sys; from edge_app.imageio import load_image; from edge_app.preprocess import *; "
            "import numpy as np; from PIL import Image; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; " + code +
            "; print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("content", [b"P6 notes for part 4471\n", b"P1 x\n", b"II*\x00" + b"\xff" * 40],
                         ids=["ppm-text", "pbm-text", "tiff-garbage"])
def test_a_file_a_format_plugin_chokes_on_is_an_image_error(tmp_path, content) -> None:
    f = tmp_path / "notes.jpg"
    f.write_bytes(content)
    with pytest.raises(ImageError, match="notes.jpg"):
        load_image(f)


def test_pipes_and_devices_are_named_as_such(tmp_path) -> None:
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)  # returns at once (opening a FIFO to read would block)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match="symbolic links"):
        load_image(loop)


def test_sixteen_bit_and_float_grey_keep_their_range(tmp_path) -> None:
    ramp16 = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    a = np.asarray(load_image(tmp_path / "g16.png"))[..., 0]
    assert np.array_equal(a, ramp16 >> 8)
    unit = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")
    b = np.asarray(load_image(tmp_path / "unit.tif"))[..., 0].astype(int)
    assert b.min() == 0 and b.max() == 255  # 0..1 floats are a unit range (were almost black)
    signed = np.linspace(-1000, 1000, 256).astype(np.int32).reshape(16, 16)
    Image.fromarray(signed, "I").save(tmp_path / "signed.tif")
    c = np.asarray(load_image(tmp_path / "signed.tif"))[..., 0].astype(int)
    assert c.min() == 0 and c.max() == 255 and 120 < c.mean() < 135  # stretched, not clipped at 0


def test_a_big_sixteen_bit_png_decodes_in_bounded_memory(tmp_path) -> None:
    """A 4000x4000 16-bit grey PNG (compresses to almost nothing): the float64 path took 8+ bytes a pixel."""
    f = tmp_path / "g16.png"
    Image.fromarray(np.zeros((4000, 4000), dtype=np.uint16)).save(f)
    mb = _peak_mb(f"img = load_image({str(f)!r}, draft_size=(448, 448)); assert img.size == (500, 500), img.size")
    # 16 MP: Pillow's 32 MB decode + the 32 MB array + 16 MB of uint8; the float64 path added 256 MB more
    assert mb < 110, f"{mb:.0f} MB"


def test_non_jpeg_photos_shrink_like_draft_mode_and_keep_orientation(tmp_path) -> None:
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    small = load_image(tmp_path / "big.png", draft_size=(448, 448))
    assert small.size == (800, 600)  # the largest whole factor (2) that keeps 448 x 448: as JPEG draft does
    # an EXIF-rotated PNG: the reduce factor is chosen in the stored frame, the result is upright
    exif = Image.Exif()
    exif[0x0112] = 6
    tall_stored = Image.fromarray(rng.integers(0, 256, (300, 2000, 3), dtype=np.uint8))  # 2000 wide, 300 high
    tall_stored.save(tmp_path / "rot.png", exif=exif.tobytes())
    up = load_image(tmp_path / "rot.png", draft_size=(100, 400))
    assert up.size[0] < up.size[1] and up.size[0] >= 100 and up.size[1] >= 400  # upright: tall
    assert load_image(tmp_path / "rot.png").size == (300, 2000)


def test_shorter_crop_of_an_extreme_aspect_photo_stays_small_and_matches(tmp_path) -> None:
    spec = PreprocessSpec(size=(224, 224), resize="shorter_crop")
    mb = _peak_mb("resize_image(Image.new('RGB', (1, 5000)), PreprocessSpec(size=(224, 224), "
                  "resize='shorter_crop'))")
    assert mb < 50, f"{mb:.0f} MB"  # resizing the whole 1x5000 image first took 1.3 GB
    # the same pixels as resizing the whole image, then cropping (within one grey level)
    from edge_app.preprocess import resize_image

    img = _img(640, 480).resize((160, 120)).resize((640, 480), Image.BILINEAR)
    h, w = spec.size
    scale = max(w, h) / spec.crop_fraction / min(img.size)
    nw, nh = max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))
    l, t = (nw - w) // 2, (nh - h) // 2
    whole = img.resize((nw, nh), Image.BILINEAR).crop((l, t, l + w, t + h))
    diff = np.abs(np.asarray(whole, dtype=int) - np.asarray(resize_image(img, spec), dtype=int))
    assert diff.max() <= 1


# -- found by an audit of photo decoding (20th session) -----------------------------------------------------------
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_draft_scale_of_a_sideways_photo_is_that_of_the_same_photo_stored_upright(tmp_path, orientation) -> None:
    """draft() scales the STORED image: a sideways photo was given the upright size unswapped and decoded at half
    the asked-for scale (750x1000 instead of 1500x2000), so the model saw less of it than of an upright photo."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    sideways, upright = tmp_path / "side.jpg", tmp_path / "up.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(sideways, exif=exif, quality=80)
    Image.new("RGB", (3000, 4000), (90, 120, 200)).save(upright, quality=80)
    want = load_image(upright, draft_size=(1000, 448)).size
    assert load_image(sideways, draft_size=(1000, 448)).size == want == (1500, 2000)  # was (750, 1000)


def test_a_phone_jpeg_with_a_gain_map_decodes_in_draft_mode(tmp_path) -> None:
    """Ultra HDR / HDR photos are MPO (a JPEG carrying a second image): they were decoded at full size."""
    p = tmp_path / "hdr.jpg"
    main_img = Image.new("RGB", (4000, 3000), (90, 120, 200))
    main_img.save(p, format="MPO", save_all=True, append_images=[Image.new("RGB", (1000, 750))], quality=80)
    with Image.open(p) as im:
        assert im.format == "MPO"
    assert load_image(p, draft_size=(448, 448)).size == (1000, 750)


def test_a_heic_photo_is_named_as_an_unsupported_format_not_a_corrupt_file(tmp_path) -> None:
    p = tmp_path / "IMG_0001.jpg"  # phones keep .jpg names on export sometimes
    p.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    with pytest.raises(ImageError, match="HEIC/HEIF/AVIF photos are not supported: set the camera to JPEG"):
        load_image(p)


def test_an_image_given_decoded_is_made_rgb_as_a_file_would_be(world) -> None:
    from edge_app.runtime.identify import Identifier

    ident = Identifier.open(world.bundle, world.keyring_path.parent / "fit" / "catalogue.db", world.keyring_path,
                            backend="onnx")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent: composited on white like a decoded file
    (good,), _ = ident.decode([rgba])
    assert good.mode == "RGB" and good.getpixel((0, 0)) == (255, 255, 255)


def _rgb_profile(red_xyz, green_xyz, blue_xyz, description: str) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile (gamma 2.2) with the given D50 primaries."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", int(round(v * 65536)))

    def xyz(v) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    text = description.encode("ascii") + b"\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    curv = b"curv\0\0\0\0" + struct.pack(">IH", 1, int(2.2 * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red_xyz)),
            (b"gXYZ", xyz(green_xyz)), (b"bXYZ", xyz(blue_xyz)), (b"rTRC", curv), (b"gTRC", curv),
            (b"bTRC", curv), (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_photo_with_another_colour_profile_is_converted_to_srgb(tmp_path, fmt) -> None:
    """A catalogue photo in another colour space (Display P3 from an iPhone, Adobe RGB) was read as if sRGB.
    Here a profile whose red and blue primaries are swapped: its pure red pixel IS blue."""
    r, g, b = SRGB_D50
    swapped = _rgb_profile(b, g, r, "swapped primaries")
    img = Image.new("RGB", (32, 32), (255, 0, 0))
    path = tmp_path / f"p.{fmt.lower()}"
    img.save(path, fmt, icc_profile=swapped, **({"quality": 95} if fmt == "JPEG" else {}))
    px = np.asarray(load_image(path), np.int16)[16, 16]
    assert px[2] > 200 and px[0] < 60, px  # blue in sRGB
    # as sRGB (its own profile, the same primaries as sRGB): the pixels as stored
    img.save(path, fmt, icc_profile=_rgb_profile(r, g, b, "sRGB IEC61966-2.1 (look-alike)"))
    assert np.asarray(load_image(path), np.int16)[16, 16][0] > 240
    # a profile that cannot be used never loses the photo
    img.save(path, fmt, icc_profile=b"\0" * 200)
    assert np.asarray(load_image(path), np.int16)[16, 16][0] > 240
