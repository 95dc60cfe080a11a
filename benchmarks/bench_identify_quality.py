"""Identification quality on grocery: unknown-part rejection (AUROC, precision at 95% recall), ECE, multi-view gain.

Products are split (fixed seed) into a CALIBRATION half and an EVALUATION half, disjoint; in each half
70% of products are "known" (in the catalogue: iconic image + 2 train photos) and 30% "unknown".
Calibration (logistic on top similarity and margin, :func:`edge_app.runtime.calibration.fit`) is
fitted on train photos of the calibration half; everything reported is measured on val photos of the
evaluation half. Part scores are exact (max over a part's images; what ``Identifier.rank`` computes
after retrieval). Model: the parity-gated TFLite export of ``bench_identify`` (the MobileNetV2 trained on
pc-parts-14, int8 if it passed the gate, else fp32; ``model_format`` says which). It was NOT trained on
grocery, so these numbers measure transfer to an unseen domain: a floor for a model trained on the catalogue.
Sample sizes are whatever the data holds (no subsampling) except ``calibration_queries`` (10 train photos
per calibration product, 4 with ``--quick``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = 3


def _embed(ctx: Any, model: str, paths: list[Path], name: str) -> np.ndarray:
    out = ctx.work_dir / f"emb_{Path(model).stem}_{name}.npy"
    if out.exists():
        return np.load(out)
    from edge_app.imageio import load_image
    from edge_app.preprocess import PreprocessSpec, preprocess_image
    from edge_app.runtime.backends import create_backend
    from export.pipeline import read_sidecar

    spec = PreprocessSpec.from_dict(read_sidecar(model)["preprocess"])
    be = create_backend(model, prefer="tflite")
    embs = []
    for p in paths:
        x = preprocess_image(load_image(p, draft_size=spec.draft_size), spec, layout=be.input_layout)
        e = be.run(x[None], layout=be.input_layout)["embedding"][0]
        embs.append(e / np.linalg.norm(e))
    arr = np.stack(embs).astype(np.float32)
    np.save(out, arr)
    return arr


def _ranking(q: np.ndarray, cat: np.ndarray, cat_part: np.ndarray, parts: list[int], fusion: str = "score",
             aggregate: str = "max") -> tuple[list[int], np.ndarray]:
    from edge_app.runtime import fusion as F

    if fusion == "embedding" and len(q) > 1:
        q = F.fuse_embeddings(q)
    vecs = {p: cat[cat_part == p] for p in parts}
    scores, _ = F.score_parts(q, parts, vecs, aggregate)
    fused = scores.mean(0)
    order = np.argsort(-fused)
    return [parts[i] for i in order], fused[order]


def run(ctx: Any) -> dict[str, Any]:
    from edge_app.runtime import calibration as C

    from .bench_identify import export_tflite, split_folders

    grocery = ctx.require_data("grocery")
    state = ctx.work_dir.parent / "identify" / "state.json"
    exp = json.loads(state.read_text()).get("export_trained_tflite") if state.is_file() else None
    if exp is None or not Path(exp["path"]).is_file():
        exp = export_tflite(ctx, split_folders(ctx, ctx.require_data("pc-parts-14")))
    model = exp["path"]
    with open(grocery / "classes.csv") as fh:
        classes = list(csv.reader(fh))[1:]
    iconic = {int(r[1]): grocery / r[4].lstrip("/") for r in classes}

    def listing(name: str) -> dict[int, list[Path]]:
        d: dict[int, list[Path]] = {}
        for line in (grocery / name).read_text().splitlines():
            if line.strip():
                path, fine, _ = [s.strip() for s in line.split(",")]
                d.setdefault(int(fine), []).append(grocery / path)
        return d

    train, val = listing("train.txt"), listing("val.txt")
    rng = np.random.default_rng(0)
    products = sorted(iconic)
    rng.shuffle(products)
    halves = {"cal": products[::2], "eval": products[1::2]}
    known = set()
    for h in halves.values():
        known.update(h[: int(0.7 * len(h))])
    cat_paths, cat_part = [], []
    for p in sorted(known):
        for path in [iconic[p], *train.get(p, [])[:2]]:
            cat_paths.append(path)
            cat_part.append(p)
    cat_part = np.array(cat_part)
    cat = _embed(ctx, model, cat_paths, "catalogue")
    known_list = sorted(known)
    # calibration queries: train photos (not the catalogue ones) of the calibration half
    cal_q = [(p, path) for p in halves["cal"] for path in train.get(p, [])[2:2 + (4 if ctx.quick else 10)]]
    cal_emb = _embed(ctx, model, [x[1] for x in cal_q], "calq")
    top, second, correct = [], [], []
    for (p, _), e in zip(cal_q, cal_emb):
        ranked, s = _ranking(e[None], cat, cat_part, known_list)
        top.append(s[0]); second.append(s[1]); correct.append(ranked[0] == p)
    cal = C.fit(top, second, correct, target_precision=0.9)
    # evaluation: val photos of the evaluation half
    ev_q = [(p, path) for p in halves["eval"] for path in val.get(p, [])]
    ev_emb = _embed(ctx, model, [x[1] for x in ev_q], "evalq")
    conf, is_known, right = [], [], []
    for (p, _), e in zip(ev_q, ev_emb):
        ranked, s = _ranking(e[None], cat, cat_part, known_list)
        conf.append(float(cal.confidence(s[0], s[1])[0]))
        is_known.append(p in known)
        right.append(ranked[0] == p)
    conf, is_known, right = np.array(conf), np.array(is_known), np.array(right)
    au = C.auroc(conf, is_known)
    lo, hi = C.bootstrap_ci(C.auroc, conf, is_known, n=1000)
    p95 = C.precision_at_recall(conf, is_known, 0.95)
    accepted = conf >= cal.threshold
    # multi-view: groups of VIEWS val photos of the same known evaluation product
    mv: dict[str, list[bool]] = {"single": [], "score": [], "embedding": []}
    for p in halves["eval"]:
        if p not in known:
            continue
        idx = [i for i, (pp, _) in enumerate(ev_q) if pp == p]
        for g in range(0, len(idx) - VIEWS + 1, VIEWS):
            views = ev_emb[idx[g:g + VIEWS]]
            mv["single"] += [_ranking(v[None], cat, cat_part, known_list)[0][0] == p for v in views]
            for f in ("score", "embedding"):
                mv[f].append(_ranking(views, cat, cat_part, known_list, fusion=f)[0][0] == p)
    return {
        "model": Path(model).name, "model_format": exp["format"], "gate": exp["gate"],
        "auroc_bootstrap_resamples": 1000, "catalogue_images": len(cat_paths), "known_products": len(known),
        "calibration_queries": len(cal_q), "eval_queries": len(ev_q),
        "eval_known_queries": int(is_known.sum()), "eval_unknown_queries": int((~is_known).sum()),
        "auroc_known_vs_unknown": au, "auroc_ci95_low": lo, "auroc_ci95_high": hi,
        "precision_at_95_recall": p95,
        "ece_top1": C.ece(conf, right), "threshold": cal.threshold,
        "accepted_fraction": float(accepted.mean()),
        "precision_of_accepted": float(right[accepted].mean()) if accepted.any() else float("nan"),
        "top1_known_eval": float(right[is_known].mean()),
        "multiview_groups": len(mv["score"]), "top1_single_view": float(np.mean(mv["single"] or [np.nan])),
        "top1_fused_score": float(np.mean(mv["score"] or [np.nan])),
        "top1_fused_embedding": float(np.mean(mv["embedding"] or [np.nan])),
        "calibration": cal.to_dict(),
    }
