"""Losses: cross-entropy + a margin-based metric loss on the L2-normalised embedding, and distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_app.errors import UsageError

METRIC_LOSSES = ("multi_similarity", "triplet", "none")


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity loss (Wang et al., CVPR 2019) with hard-pair mining, on unit vectors."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, margin: float = 0.1) -> None:
        super().__init__()
        self.alpha, self.beta, self.base, self.margin = alpha, beta, base, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = emb @ emb.t()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
        pos_mask, neg_mask = same & ~eye, ~same
        losses = []
        for i in range(len(labels)):
            pos, neg = sim[i][pos_mask[i]], sim[i][neg_mask[i]]
            if len(pos) == 0 or len(neg) == 0:
                continue
            # mining: keep negatives harder than the easiest positive, positives harder than the hardest negative
            neg = neg[neg + self.margin > pos.min()]
            pos = pos[pos - self.margin < sim[i][neg_mask[i]].max()]
            if len(pos) == 0 or len(neg) == 0:
                continue
            lp = torch.log1p(torch.exp(-self.alpha * (pos - self.base)).sum()) / self.alpha
            ln = torch.log1p(torch.exp(self.beta * (neg - self.base)).sum()) / self.beta
            losses.append(lp + ln)
        if not losses:
            return emb.sum() * 0.0
        return torch.stack(losses).mean()


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss on cosine distance (1 - cos) with a fixed margin."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = 1.0 - emb @ emb.t()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
        pos = (same & ~eye)
        valid = pos.any(1) & (~same).any(1)
        if not valid.any():
            return emb.sum() * 0.0
        hardest_pos = torch.where(pos, dist, torch.full_like(dist, -1.0)).max(1).values
        hardest_neg = torch.where(~same, dist, torch.full_like(dist, 9.0)).min(1).values
        return F.relu(hardest_pos - hardest_neg + self.margin)[valid].mean()


def make_metric_loss(name: str, margin: float | None = None) -> nn.Module | None:
    if name == "multi_similarity":
        return MultiSimilarityLoss(margin=0.1 if margin is None else margin)
    if name == "triplet":
        return BatchHardTripletLoss(margin=0.2 if margin is None else margin)
    if name == "none":
        return None
    raise UsageError(f"metric loss must be one of {METRIC_LOSSES}, got {name!r}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_emb: torch.Tensor,
                      teacher_emb: torch.Tensor, temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL on softened logits * T^2, 1 - cosine between student and teacher embeddings)."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean") * t * t
    cos = (1.0 - F.cosine_similarity(student_emb, teacher_emb, dim=1)).mean()
    return kd, cos
