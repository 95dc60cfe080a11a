"""The hub decodes catalogue images like the device does (JPEG draft mode at the bundle's draft size)."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from .helpers import make_key


class SizeRecorder:
    """An embedder that records the decoded image sizes it is given."""

    def __init__(self, bundle_id: str, draft_size: tuple[int, int] | None) -> None:
        self.bundle_id = bundle_id
        if draft_size is not None:
            self.draft_size = draft_size
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, images):
        self.sizes += [img.size for img in images]
        return np.ones((len(images), 4), np.float32)


def _jpeg(size: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_embed_rows_uses_the_embedders_draft_size(tmp_path: Path) -> None:
    from sync.hub.hub import Hub

    key, _, _ = make_key(tmp_path / "keys")
    hub = Hub.init(tmp_path / "hub", key)
    row = hub.store_image(_jpeg(256), "P0")
    with_draft = SizeRecorder("b1", (64, 64))
    hub.embed_rows([row], with_draft)
    assert with_draft.sizes == [(64, 64)]  # DCT-scaled by 1/4, as load_image(draft_size=(64, 64)) on the device
    without = SizeRecorder("b1", None)
    hub.embed_rows([row], without)
    assert without.sizes == [(256, 256)]  # embedders without a draft size (test stand-ins) get full decodes


def test_bundle_embedder_decodes_at_the_bundle_draft_size() -> None:
    from edge_app.preprocess import PreprocessSpec
    from sync.embedder import BundleEmbedder

    spec = PreprocessSpec(size=(64, 48))
    emb = BundleEmbedder(SimpleNamespace(bundle_id="b1", preprocess=spec, embedding_dim=4, catalogue_views="none"),
                         backend=None)
    assert emb.draft_size == spec.draft_size == (96, 128)


def test_hub_embeds_reference_images_with_the_bundles_views_and_field_photos_once(tmp_path: Path) -> None:
    from edge_app.catalogue_views import embed_with_views
    from edge_app.imageio import load_image
    from edge_app.errors import UsageError
    from edge_app.preprocess import PreprocessSpec
    from sync.embedder import BundleEmbedder
    from sync.hub.hub import Hub

    class MeanColour:  # a view-dependent stand-in for the model
        def run(self, batch):
            return {"embedding": np.concatenate([batch.mean(axis=(2, 3)), np.ones((len(batch), 1))], axis=1)}

    spec = PreprocessSpec(size=(32, 32))

    def embedder(views: str) -> BundleEmbedder:
        return BundleEmbedder(SimpleNamespace(bundle_id="b1", preprocess=spec, embedding_dim=4,
                                              catalogue_views=views), backend=MeanColour())

    viewed, plain = embedder("flip-crop5"), embedder("none")
    assert viewed.catalogue_views == "flip-crop5"
    key, _, _ = make_key(tmp_path / "keys")
    hub = Hub.init(tmp_path / "hub", key)
    rows = [hub.store_image(_jpeg(64, 1), "P0"), hub.store_image(_jpeg(64, 2), "P0", kind="field")]
    imgs = [load_image(hub.image_path(r), draft_size=viewed.draft_size) for r in rows]
    got = hub.embed_rows(rows, viewed)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(got[0], embed_with_views(plain, imgs[:1], "flip-crop5")[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], unit(plain(imgs[1:]))[0], rtol=1e-5)  # a field photo: once
    assert not np.allclose(got[0], unit(plain(imgs[:1]))[0], atol=1e-4)  # the views changed the reference image
    np.testing.assert_allclose(hub.embed_rows(rows, plain), unit(plain(imgs)), rtol=1e-5)
    with pytest.raises(UsageError, match="unknown catalogue view set"):
        embedder("x")


def _dds_header() -> bytes:
    """A DDS file whose pixel format Pillow does not implement (it raised NotImplementedError past every guard)."""
    import struct

    header = bytearray(124)
    struct.pack_into("<7I", header, 0, 124, 0x1007, 4, 4, 0, 0, 0)  # size, flags, height, width, ...
    struct.pack_into("<2I", header, 72, 32, 0)  # pixel format: size 32, flags 0 (no known format)
    return b"DDS " + bytes(header) + b"\0" * 64


def test_only_photo_formats_are_parsed_and_files_are_checked_before_reading(tmp_path: Path) -> None:
    """Found by an audit of the hub's admin workflows (21st session): a DDS file ended `hub add-part`, `import`,
    `review approve` and `evaluate-bundle` in a traceback; `add-part --image` read a link to /dev/zero until the
    OOM killer; an approved PNG upload was stored (and exported) as .jpg."""
    from PIL import Image

    from edge_app.errors import ImageError
    from edge_app.imageio import header_error, load_image
    from sync.hub.hub import Hub

    dds = tmp_path / "part.jpg"
    dds.write_bytes(_dds_header())
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(dds)
    assert header_error(dds)  # an import names it instead of failing later
    heic = tmp_path / "photo.jpg"
    heic.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    assert "HEIC" in header_error(heic)  # the same advice as add-part and approve give
    key, _, _ = make_key(tmp_path / "keys")
    hub = Hub.init(tmp_path / "hub", key)
    with pytest.raises(ImageError, match="not a recognised image format"):
        hub.store_image(dds, "P0")
    with pytest.raises(ImageError, match="upload u1: not a recognised"):
        hub.store_image(dds.read_bytes(), "P0", kind="field", what="upload u1")
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="not a regular file"):
        hub.store_image(zero, "P0")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    row = hub.store_image(buf.getvalue(), "P0", kind="field", what="upload u2")
    assert row["path"].endswith(".png")  # what the file holds, not ".jpg"
    named_wrong = tmp_path / "really-a-png.jpg"
    named_wrong.write_bytes(buf.getvalue())
    assert hub.store_image(named_wrong, "P0")["path"].endswith(".png")
    assert hub.store_image(_jpeg(64), "P0")["path"].endswith(".jpg")


def test_storing_a_huge_flat_photo_decodes_it_only_as_big_as_the_thumbnail(tmp_path: Path) -> None:
    """A 77 kB grey PNG of 8900x8900 px took 674 MB at approve (decoded whole, converted to RGB, copied for the
    thumbnail); now it is reduced before any copy. Peak RSS of a child process, which only stores that photo."""
    import subprocess
    import sys
    import textwrap

    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (8000, 8000), 128).save(big)
    key, _, _ = make_key(tmp_path / "keys")
    from sync.hub.hub import Hub

    Hub.init(tmp_path / "hub", key)
    code = textwrap.dedent(f"""
        import resource
        from PIL import Image
        from sync.hub.hub import Hub
        Image.new("RGB", (8, 8)).save("{tmp_path}/warm.png")
        hub = Hub("{tmp_path}/hub")
        hub.store_image("{tmp_path}/warm.png", "P0")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        row = hub.store_image("{big}", "P0")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, row["path"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    grew_mb = int(out.stdout.split()[0])
    # the 8-bit decode itself is 64 MB; whole RGB copies were 192 MB each
    assert grew_mb < 150, f"storing the photo grew the process by {grew_mb} MB"
