"""Batched inference over an :class:`ImageSet` with the device's eval transform."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from .data import ImageSet, TorchImageDataset, collate_skip

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    logits: np.ndarray
    embeddings: np.ndarray
    targets: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def predict(model, images: ImageSet, *, batch_size: int = 64, device: str = "cpu", workers: int = 0,
            progress: bool | None = None, spec=None) -> Predictions:
    """Logits and L2-normalised embeddings for every readable image (unreadable ones are listed)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    module = model.module if hasattr(model, "module") else model
    ds = TorchImageDataset(images, spec or module.preprocess)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip)
    show = sys.stderr.isatty() if progress is None else progress
    logits, embs, ys, idxs = [], [], [], []
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"predict {images.name}", disable=not show, leave=False):
            if batch is None:
                continue
            x, y, idx = batch
            lo, em = module(x.to(device))
            logits.append(lo.float().cpu().numpy())
            embs.append(em.float().cpu().numpy())
            ys.append(y.numpy())
            idxs.append(idx.numpy())
    module.train(was_training)
    n_cls, dim = module.num_classes, module.embed_dim
    index = np.concatenate(idxs) if idxs else np.zeros(0, dtype=np.int64)
    readable = {int(i) for i in index}
    reasons = dict(ds.skipped)
    skipped = [(rel, reasons.get(rel, "unreadable")) for i, (rel, _) in enumerate(ds.items) if i not in readable]
    if skipped:
        log.warning("%s: %d unreadable image(s) skipped, e.g. %s", images.name, len(skipped), skipped[0][0])
    return Predictions(
        np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32),
        np.concatenate(embs) if embs else np.zeros((0, dim), np.float32),
        np.concatenate(ys) if ys else np.zeros(0, np.int64),
        [ds.items[int(i)][0] for i in index],
        skipped,
    )
