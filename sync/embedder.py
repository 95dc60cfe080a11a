"""Embedding catalogue images with a bundle's exported model (hub) — or any injected callable.

An :class:`Embedder` turns decoded RGB images into float32 vectors and names the bundle whose
model made them. The hub embeds through :func:`bundle_embedder` (the runtime backend of the
active bundle, with the bundle's frozen :class:`~edge_app.preprocess.PreprocessSpec`); tests
inject small deterministic embedders with the same protocol.

An embedder may also set ``draft_size`` (JPEG draft-decode size, width x height): the hub then
decodes images exactly as the device (``Identifier.decode``) and the bundle builder
(``export.catalogue.embed_catalogue``) do, ``load_image(path, draft_size=spec.draft_size)``, so a
hub vector equals the one the device computes for the same image. An embedder may also set
``catalogue_views`` (:class:`BundleEmbedder`: the bundle's ``manifest["catalogue"]["views"]``): the hub
then embeds reference images (kind ``catalogue``) as the mean of those views, as the bundle builder did
(:mod:`edge_app.catalogue_views`); embedders without it embed every image once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edge_app.catalogue_views import check_views
from edge_app.signing import Keyring

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """``embedder(images) -> float32 (N, D)``; ``embedder.bundle_id`` names the model."""

    bundle_id: str

    def __call__(self, images: Sequence[Any]) -> np.ndarray: ...


#: ``factory(bundle_dir, keyring) -> Embedder`` for a verified bundle folder.
EmbedderFactory = Callable[[Path, Keyring], Embedder]


class BundleEmbedder:
    """The bundle's model through ``edge_app.runtime.backends.create_backend``."""

    def __init__(self, bundle: Any, backend: Any, batch_size: int = 16) -> None:
        self.bundle = bundle
        self.bundle_id = bundle.bundle_id
        self.backend = backend
        self.spec = bundle.preprocess
        #: decode JPEGs like the device (``Identifier.decode``) and the bundle builder (``embed_catalogue``)
        self.draft_size: tuple[int, int] = bundle.preprocess.draft_size
        self.batch_size = batch_size
        #: the hub embeds reference images as the bundle builder did (this view set)
        self.catalogue_views = check_views(bundle.catalogue_views)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        from edge_app.preprocess import preprocess_image

        out = []
        for i in range(0, len(images), self.batch_size):
            batch = np.stack([preprocess_image(img, self.spec) for img in images[i:i + self.batch_size]])
            out.append(np.asarray(self.backend.run(batch)["embedding"], dtype=np.float32))
        if not out:
            return np.zeros((0, self.bundle.embedding_dim), np.float32)
        return np.concatenate(out)


def bundle_embedder(bundle_dir: Path, keyring: Keyring) -> Embedder:
    """An :class:`Embedder` running the verified bundle at ``bundle_dir``."""
    from edge_app.bundle import load_bundle
    from edge_app.runtime.backends import create_backend  # type: ignore[import-not-found]

    bundle = load_bundle(bundle_dir, keyring)
    return BundleEmbedder(bundle, create_backend(bundle))
