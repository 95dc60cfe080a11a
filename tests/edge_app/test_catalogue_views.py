"""Catalogue-view averaging: the fixed views, their mean, and how a bundle records and repeats them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_app.catalogue_views import DEFAULT_VIEWS, VIEW_SETS, check_views, embed_with_views, mean_of_views, views
from edge_app.errors import UsageError


def _image(w: int = 50, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_views_are_the_image_its_mirror_and_five_crops() -> None:
    img = _image()
    a = np.asarray(img)
    vs = views(img, "flip-crop5")
    assert len(vs) == VIEW_SETS["flip-crop5"] == 7
    assert np.array_equal(np.asarray(vs[0]), a)
    assert np.array_equal(np.asarray(vs[1]), a[:, ::-1])
    crops = [np.asarray(v) for v in vs[2:]]
    assert all(c.shape == (32, 40, 3) for c in crops)  # 80% of each side
    assert np.array_equal(crops[0], a[4:36, 5:45])  # centre
    assert np.array_equal(crops[1], a[:32, :40]) and np.array_equal(crops[4], a[8:, 10:])  # two corners
    assert [np.asarray(v).tolist() for v in views(img, "none")] == [a.tolist()]


def test_mean_of_views_is_the_normalised_mean_of_unit_views() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 5)).astype(np.float32) * rng.uniform(0.1, 10, (6, 1)).astype(np.float32)
    m = mean_of_views(v, 3)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    want = unit.reshape(2, 3, 5).mean(1)
    np.testing.assert_allclose(m, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(UsageError, match="multiple of 4"):
        mean_of_views(v, 4)


def test_embed_with_views_embeds_every_view_once() -> None:
    calls: list[int] = []

    def embed(images):  # mean colour + a constant: a view-dependent, deterministic "model"
        calls.append(len(images))
        return np.array([[*np.asarray(i, np.float32).mean((0, 1)), 100.0] for i in images], np.float32)

    imgs = [_image(), _image(30, 30)]
    out = embed_with_views(embed, imgs, "flip-crop5")
    assert calls == [14] and out.shape == (2, 4)
    np.testing.assert_allclose(out[0], mean_of_views(embed(views(imgs[0], "flip-crop5")), 7)[0], rtol=1e-6)
    single = embed_with_views(embed, imgs, "none")
    assert not np.allclose(single, out)  # the views change the vector


def test_unknown_view_sets_are_refused() -> None:
    assert check_views(DEFAULT_VIEWS) == DEFAULT_VIEWS
    with pytest.raises(UsageError, match="unknown catalogue view set"):
        views(_image(), "ten-crop")


def test_embed_with_views_takes_a_view_set_per_image_and_checks_the_embedder() -> None:
    def embed(images):
        return np.array([[*np.asarray(i, np.float32).mean((0, 1)), 100.0] for i in images], np.float32)

    imgs = [_image(), _image(30, 30), _image(20, 40)]
    mixed = embed_with_views(embed, imgs, ["flip-crop5", "none", "flip-crop5"])
    np.testing.assert_allclose(mixed[0], embed_with_views(embed, imgs[:1], "flip-crop5")[0], rtol=1e-6)
    np.testing.assert_allclose(mixed[1], embed_with_views(embed, imgs[1:2], "none")[0], rtol=1e-6)
    np.testing.assert_allclose(mixed[2], embed_with_views(embed, imgs[2:], "flip-crop5")[0], rtol=1e-6)
    with pytest.raises(UsageError, match="2 view sets for 3 images"):
        embed_with_views(embed, imgs, ["none", "none"])
    with pytest.raises(UsageError, match="embedder returned"):
        embed_with_views(lambda ims: np.ones((1, 4), np.float32), imgs, "none")
