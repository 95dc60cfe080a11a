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
