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


def _jpeg(size: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
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


def test_bundle_embedder_uses_the_bundles_catalogue_views() -> None:
    from PIL import Image

    from edge_app.catalogue_views import embed_with_views
    from edge_app.errors import UsageError
    from edge_app.preprocess import PreprocessSpec
    from sync.embedder import BundleEmbedder

    class MeanColour:  # a view-dependent stand-in for the model
        def run(self, batch):
            return {"embedding": np.concatenate([batch.mean(axis=(2, 3)), np.ones((len(batch), 1))], axis=1)}

    spec = PreprocessSpec(size=(32, 32))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    plain = BundleEmbedder(SimpleNamespace(bundle_id="b", preprocess=spec, embedding_dim=4, catalogue_views="none"),
                           backend=MeanColour())
    viewed = BundleEmbedder(SimpleNamespace(bundle_id="b", preprocess=spec, embedding_dim=4,
                                            catalogue_views="flip-crop5"), backend=MeanColour())
    out = viewed([img])
    np.testing.assert_allclose(out, embed_with_views(plain, [img], "flip-crop5"), rtol=1e-6)
    assert not np.allclose(out / np.linalg.norm(out), plain([img]) / np.linalg.norm(plain([img])))
    with pytest.raises(UsageError, match="unknown catalogue view set"):
        BundleEmbedder(SimpleNamespace(bundle_id="b", preprocess=spec, embedding_dim=4, catalogue_views="x"), None)
