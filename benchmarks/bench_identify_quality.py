"""Identification quality on grocery: unknown-part rejection (AUROC, precision at 95% recall), ECE, multi-view gain.

Models (``model_source``):

- ``grocery-folds`` (preferred): the EfficientNet-Lite0 of each ``train-grocery-new-products`` fold (5; ``--quick``:
  fold 0), each trained on 80% of the products; the other 20% were never trained on. Each is exported here to
  TFLite behind the parity gate (int8, else fp32; ``model_format``). Per fold: known products = the trained ones
  (the catalogue: iconic image + 2 train photos each); unknown products = the held-out ones, as a part missing
  from the inventory would be. Known and unknown products are each split (seed = fold) into halves A and B,
  and CROSS-FITTED: calibrate on A's photos and evaluate on B's, then the other way round, so every evaluation
  query is scored by a calibration fitted on other products, and every product of every fold is evaluated
  once. Calibration and every number that depends on the share of unknown queries (ECE, threshold, accepted
  fraction, precision) use val photos only: the dataset's own mix (about 1 unknown query in 6). AUROC does
  not depend on that share, so it also uses the TRAIN photos of the held-out products (their fold never
  trained on them). One fold and one half give about 160 val queries: the ECE of a PERFECTLY calibrated model
  is then about 0.1 by sampling noise alone, so ECE is pooled over all folds and halves (about 1,500 queries).
  The table has each fold and half.
- ``pcparts-transfer`` (fallback when no fold exists): the pc-parts MobileNetV2 of ``bench_identify``;
  products split into halves, 70% of each known, calibration on train photos. It never saw grocery: a floor.

Calibration is :func:`edge_app.runtime.calibration.fit` (logistic on top similarity and margin) at target
precision 0.9. ``auroc_alternative_*`` scores the same queries with other unknown-part scores (top similarity
alone, margin alone, the classifier's max softmax and energy) to show whether the score is the bottleneck.
AUROC carries two 95% bootstrap intervals: over queries, and over PRODUCTS (photos of one product move
together, so the product interval is the honest one). ECE comes with the ECE a perfectly calibrated model
would show at the same number of queries (``ece_if_perfectly_calibrated``). Part scores are exact (max over
a part's images; what ``Identifier.rank`` computes after retrieval). Catalogue images are embedded as a bundle
stores them: the iconic images as the mean of the default catalogue views (``catalogue_views`` in the result),
the catalogue's phone photos once.
"""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.catalogue_views import DEFAULT_VIEWS

from .bench_train_grocery_new_products import FOLDS, held_out_classes

VIEWS = 3


@functools.lru_cache(maxsize=None)
def _sha12(path: Path) -> str:
    """The first 12 hex digits of the file's sha256 (cache and step keys that change with the file); read once
    per file and run (every cached embedding / logits lookup keys on the model file)."""
    from edge_app.bundle import sha256_file

    return sha256_file(path)[:12]


def _cached(ctx: Any, model: str, paths: list[Path], name: str, kind: str, tag: str, compute: Any) -> np.ndarray:
    """``compute(spec, backend)`` for the exported ``model``, cached in the work dir as ``kind_model_name_key.npy``
    (key: a hash of ``tag`` and the paths)."""
    import hashlib

    # the model file's content is in the key: a re-trained model with the same file name never reuses old vectors
    key = hashlib.sha256("\n".join([_sha12(Path(model)), tag, *map(str, paths)]).encode()).hexdigest()[:12]
    out = ctx.work_dir / f"{kind}_{Path(model).stem}_{name}_{key}.npy"
    if out.exists():
        return np.load(out)
    from edge_app.preprocess import PreprocessSpec
    from edge_app.runtime.backends import create_backend
    from export.pipeline import read_sidecar

    arr = compute(PreprocessSpec.from_dict(read_sidecar(model)["preprocess"]),
                  create_backend(model, prefer="tflite")).astype(np.float32)
    np.save(out, arr)
    return arr


def _embed(ctx: Any, model: str, paths: list[Path], name: str, views: str = "none") -> np.ndarray:
    """Unit embeddings of ``paths`` with the exported ``model``; catalogue images with the product's
    catalogue views (:mod:`edge_app.catalogue_views`), query photos once each, as the device does."""
    from edge_app.catalogue_views import embed_with_views
    from edge_app.imageio import load_image
    from edge_app.preprocess import preprocess_image

    def compute(spec: Any, be: Any) -> np.ndarray:
        def run(images: list[Any]) -> np.ndarray:
            x = [preprocess_image(im, spec, layout=be.input_layout)[None] for im in images]
            return np.concatenate([be.run(xi, layout=be.input_layout)["embedding"] for xi in x])

        return np.concatenate([embed_with_views(run, [load_image(p, draft_size=spec.draft_size)], views)
                               for p in paths])

    return _cached(ctx, model, paths, name, "emb", views, compute)


def _logits(ctx: Any, model: str, paths: list[Path], name: str) -> np.ndarray:
    """Classifier logits of ``paths`` (each photo once) from the exported model, cached like :func:`_embed`."""
    from edge_app.imageio import load_image
    from edge_app.preprocess import preprocess_image

    def compute(spec: Any, be: Any) -> np.ndarray:
        return np.concatenate([be.run(preprocess_image(load_image(p, draft_size=spec.draft_size), spec,
                                                       layout=be.input_layout)[None], layout=be.input_layout)["logits"]
                               for p in paths])

    return _cached(ctx, model, paths, name, "logits", "", compute)


def _alternative_scores(tops: np.ndarray, seconds: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Other "is this part in the catalogue?" scores than the deployed calibrated one, for comparison:
    the top part similarity, the margin to the second part, and the classifier's max softmax and
    energy (log-sum-exp of the logits; the classifier covers the trained products only)."""
    z = logits.astype(np.float64)
    lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    return {"top_similarity": tops, "margin": tops - seconds, "classifier_max_softmax": np.exp(z.max(1) - lse),
            "classifier_energy": lse}


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


def _check_fold_products(ckpt: Path, known_names: set[str], fold: int) -> None:
    """The fold model must have been trained on exactly the products this fold keeps: a checkpoint left from
    another hold-out rule (before the partition) would count trained products as unknown."""
    from edge_app.errors import UsageError
    from training.models import read_checkpoint

    trained = set(read_checkpoint(ckpt)["labels"])
    if trained != known_names:
        raise UsageError(f"{ckpt}: fold {fold} was trained on {len(trained)} products, {len(trained - known_names)} "
                         f"of them held out by this fold's partition and {len(known_names - trained)} it keeps "
                         "missing: run `partlens bench train-grocery-new-products --fresh` first")


def run(ctx: Any) -> dict[str, Any]:
    grocery = ctx.require_data("grocery")
    with open(grocery / "classes.csv") as fh:
        classes = [r for r in list(csv.reader(fh))[1:] if r]
    iconic = {int(r[1]): grocery / r[4].lstrip("/") for r in classes}

    def listing(name: str) -> dict[int, list[Path]]:
        d: dict[int, list[Path]] = {}
        for line in (grocery / name).read_text().splitlines():
            if line.strip():
                path, fine, _ = [s.strip() for s in line.split(",")]
                d.setdefault(int(fine), []).append(grocery / path)
        return d

    train, val = listing("train.txt"), listing("val.txt")
    fold_dir = ctx.work_dir.parent / "train-grocery-new-products"
    folds = [f for f in range(FOLDS) if (fold_dir / f"fold{f}" / "last.pt").is_file()][: 1 if ctx.quick else FOLDS]
    if folds:
        from .bench_identify import export_tflite

        ids = sorted(iconic)  # load_grocery orders classes by id: class index i is ids[i]
        runs, rows = [], []
        for f in folds:
            ckpt = fold_dir / f"fold{f}" / "last.pt"
            held = [ids[i] for i in held_out_classes(len(ids), f)]
            known = sorted(set(ids) - set(held))
            _check_fold_products(ckpt, {r[0] for r in classes if int(r[1]) in known}, f)
            exp = export_tflite(ctx, _grocery_folders(ctx, grocery, classes, train, val, known, f"fold{f}"), ckpt,
                                key=f"export_grocery_fold{f}_{_sha12(ckpt)}",  # a re-trained fold is re-exported
                                out_dir=ctx.work_dir / "export" / f"fold{f}")
            rng = np.random.default_rng(f)
            known_order, unknown = list(known), list(held)
            rng.shuffle(known_order)
            rng.shuffle(unknown)
            halves = (known_order[::2] + unknown[::2], known_order[1::2] + unknown[1::2])
            eval_photos = {p: [*val.get(p, []), *(train.get(p, []) if p in held else [])] for p in ids}
            for d, name in ((0, "A"), (1, "B")):  # cross-fitting: calibrate on one half, evaluate on the other
                r = _score(ctx, exp, iconic, train, set(known), halves[d], halves[1 - d], val, eval_photos,
                           val, tag=f"fold{f}", group_offset=0)  # a product is one bootstrap unit over folds
                runs.append(r)
                rows.append({"fold": f, "calibrated_on_half": name, **_run_row(r)})
        return {"model_source": "grocery-folds", "folds": len(folds), "model": Path(exp["path"]).name,
                "model_format": "/".join(sorted({r["format"] for r in runs})), "table": rows, **_pooled(runs)}
    from .bench_identify import export_tflite, split_folders

    state = ctx.work_dir.parent / "identify" / "state.json"
    exp = json.loads(state.read_text()).get("export_trained_tflite") if state.is_file() else None
    if exp is None or not Path(exp["path"]).is_file():
        exp = export_tflite(ctx, split_folders(ctx, ctx.require_data("pc-parts-14")))
    products = sorted(iconic)
    rng = np.random.default_rng(0)
    rng.shuffle(products)
    cal_products, eval_products = products[::2], products[1::2]
    known = [*cal_products[: int(0.7 * len(cal_products))], *eval_products[: int(0.7 * len(eval_products))]]
    cal_photos = {p: v[2:2 + (4 if ctx.quick else 10)] for p, v in train.items()}
    r = _score(ctx, exp, iconic, train, set(known), cal_products, eval_products, cal_photos, val, val, tag="pcparts")
    return {"model_source": "pcparts-transfer", "folds": 0, "model": Path(exp["path"]).name,
            "model_format": exp["format"], "table": [_run_row(r)], **_pooled([r])}


def _grocery_folders(ctx: Any, root: Path, classes: list[list[str]], train: dict[int, list[Path]],
                     val: dict[int, list[Path]], known: list[int], tag: str) -> dict[str, Path]:
    """Symlink folders ``<work>/grocery/<tag>/{train,val}/<class name>/<file>`` of the known (trained) products:
    int8 calibration photos and parity-gate photos for the exporter."""
    names = {int(r[1]): r[0] for r in classes}
    out = {}
    for split, photos in (("train", train), ("val", val)):
        d = ctx.work_dir / "grocery" / tag / split
        for p in known:
            for path in photos.get(p, []):
                link = d / names[p] / path.name
                if not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(path)
        out[split] = d
    return out


def _score(ctx: Any, exp: dict[str, Any], iconic: dict[int, Path], train: dict[int, list[Path]], known: set[int],
           cal_products: list[int], eval_products: list[int], cal_photos: dict[int, list[Path]],
           eval_photos: dict[int, list[Path]], val: dict[int, list[Path]], *, tag: str,
           group_offset: int = 0) -> dict[str, Any]:
    """Calibrate ``exp``'s model on photos of ``cal_products`` and score every photo of ``eval_products``.

    Returns per-query arrays (confidence, known?, top-1 right?, val photo?, product group, alternative
    scores) and the multi-view outcomes; :func:`_run_row` and :func:`_pooled` turn them into numbers.
    """
    from edge_app.runtime import calibration as C

    model = exp["path"]
    cat_paths, cat_part = [], []
    for p in sorted(known):
        for path in [iconic[p], *train.get(p, [])[:2]]:
            cat_paths.append(path)
            cat_part.append(p)
    cat_part = np.array(cat_part)
    # as a bundle stores them: the iconic (reference) images as the mean of the catalogue views, the two
    # phone photos per product (field photos added to the catalogue) once
    ref = np.array([path == iconic[p] for path, p in zip(cat_paths, cat_part)])
    e_ref = _embed(ctx, model, [q for q, m in zip(cat_paths, ref) if m], f"{tag}_catalogue_ref", views=DEFAULT_VIEWS)
    e_photos = _embed(ctx, model, [q for q, m in zip(cat_paths, ref) if not m], f"{tag}_catalogue_photos")
    cat = np.empty((len(cat_paths), e_ref.shape[1]), np.float32)
    cat[ref], cat[~ref] = e_ref, e_photos
    known_list = sorted(known)
    # every photo either half may need, embedded once per model (both cross-fitting directions share them)
    pool = sorted({path for d in (cal_photos, eval_photos) for v in d.values() for path in v})
    row_of = {path: i for i, path in enumerate(pool)}
    pool_emb = _embed(ctx, model, pool, f"{tag}_queries")
    cal_q = [(p, path) for p in cal_products for path in cal_photos.get(p, [])]
    top, second, correct = [], [], []
    for p, path in cal_q:
        ranked, s = _ranking(pool_emb[row_of[path]][None], cat, cat_part, known_list)
        top.append(s[0]); second.append(s[1]); correct.append(ranked[0] == p)
    cal = C.fit(top, second, correct, target_precision=0.9)
    ev_q = [(p, path) for p in eval_products for path in eval_photos.get(p, [])]
    ev_emb = pool_emb[[row_of[path] for _, path in ev_q]]
    conf, is_known, right, tops, seconds = [], [], [], [], []
    for (p, _), e in zip(ev_q, ev_emb):
        ranked, s = _ranking(e[None], cat, cat_part, known_list)
        conf.append(float(cal.confidence(s[0], s[1])[0]))
        tops.append(s[0]); seconds.append(s[1])
        is_known.append(p in known)
        right.append(ranked[0] == p)
    pool_logits = _logits(ctx, model, pool, f"{tag}_queries")
    alternatives = _alternative_scores(np.array(tops), np.array(seconds),
                                       pool_logits[[row_of[path] for _, path in ev_q]])
    val_paths = {path for v in val.values() for path in v}
    # multi-view: groups of VIEWS val photos of the same known evaluation product
    mv: dict[str, list[bool]] = {"single": [], "score": [], "embedding": []}
    for p in eval_products:
        if p not in known:
            continue
        idx = [i for i, (pp, path) in enumerate(ev_q) if pp == p and path in val_paths]
        for g in range(0, len(idx) - VIEWS + 1, VIEWS):
            views = ev_emb[idx[g:g + VIEWS]]
            mv["single"] += [_ranking(v[None], cat, cat_part, known_list)[0][0] == p for v in views]
            for f in ("score", "embedding"):
                mv[f].append(_ranking(views, cat, cat_part, known_list, fusion=f)[0][0] == p)
    return {"format": exp["format"], "gate": exp["gate"], "calibration": cal, "calibration_queries": len(cal_q),
            "catalogue_images": len(cat_paths), "known_products": len(known),
            "conf": np.array(conf), "is_known": np.array(is_known, bool), "right": np.array(right, bool),
            "in_val": np.array([path in val_paths for _, path in ev_q], bool),
            "group": np.array([group_offset + p for p, _ in ev_q]), "alternatives": alternatives, "multiview": mv}


def _run_row(r: dict[str, Any]) -> dict[str, Any]:
    """One model + one calibration half: the table row."""
    from edge_app.runtime import calibration as C

    vc, vk, vr = r["conf"][r["in_val"]], r["is_known"][r["in_val"]], r["right"][r["in_val"]]
    accepted = vc >= r["calibration"].threshold
    return {"format": r["format"], "calibration_queries": r["calibration_queries"], "eval_queries": len(r["conf"]),
            "eval_val_queries": len(vc), "eval_unknown_queries": int((~r["is_known"]).sum()),
            "auroc": C.auroc(r["conf"], r["is_known"]), "auroc_val_only": C.auroc(vc, vk),
            "ece_top1_val": C.ece(vc, vr), "ece_if_perfectly_calibrated": C.ece_sampling_floor(vc),
            "threshold": r["calibration"].threshold, "accepted_fraction_val": float(accepted.mean()),
            "precision_of_accepted_val": float(vr[accepted].mean()) if accepted.any() else None,
            "top1_known_eval": float(r["right"][r["is_known"]].mean())}


def _pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers over every run's evaluation queries.

    Calibration numbers (ECE, precision, accepted share) pool the calibrated confidences: each is a
    probability whatever model and half produced it, and pooling is what gives ECE enough queries to mean
    something. Ranking numbers (AUROC and the alternative scores) are per run (one model, one calibration)
    and reported as mean and std over runs; ``auroc_pooled`` with its product-bootstrap interval is over
    all queries (a product's photos move together: the product interval is the honest one).
    """
    from edge_app.runtime import calibration as C

    cat = {k: np.concatenate([r[k] for r in runs]) for k in ("conf", "is_known", "right", "in_val", "group")}
    vc, vk, vr = (cat[k][cat["in_val"]] for k in ("conf", "is_known", "right"))
    accepted = np.concatenate([r["conf"][r["in_val"]] >= r["calibration"].threshold for r in runs])
    per_run = np.array([C.auroc(r["conf"], r["is_known"]) for r in runs])
    std = (lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else None)  # noqa: E731 - no spread from one run
    rows_stats: dict[str, int] = {}
    products_stats: dict[str, int] = {}
    lo, hi = C.bootstrap_ci(C.auroc, cat["conf"], cat["is_known"], n=1000, stats=rows_stats)
    plo, phi = C.bootstrap_ci(C.auroc, cat["conf"], cat["is_known"], n=1000, groups=cat["group"],
                              stats=products_stats)
    mv = {k: [x for r in runs for x in r["multiview"][k]] for k in ("single", "score", "embedding")}
    first = runs[0]
    return {
        "catalogue_views": DEFAULT_VIEWS, "runs": len(runs), "auroc_bootstrap_resamples": 1000,
        "auroc_bootstrap_scored": rows_stats["resamples_scored"],
        "auroc_bootstrap_products_scored": products_stats["resamples_scored"],
        "auroc_bootstrap_products": int(len(np.unique(cat["group"]))),
        "catalogue_images_first_run": first["catalogue_images"], "known_products_first_run": first["known_products"],
        "eval_queries": len(cat["conf"]), "eval_known_queries": int(cat["is_known"].sum()),
        "eval_unknown_queries": int((~cat["is_known"]).sum()), "eval_val_queries": len(vc),
        "eval_unknown_val_queries": int((~vk).sum()),
        "auroc_mean": float(per_run.mean()), "auroc_std": std(per_run),
        "auroc_pooled": C.auroc(cat["conf"], cat["is_known"]), "auroc_pooled_ci95_low": lo,
        "auroc_pooled_ci95_high": hi, "auroc_pooled_ci95_products_low": plo, "auroc_pooled_ci95_products_high": phi,
        "auroc_val_only_pooled": C.auroc(vc, vk),
        **{f"auroc_alternative_{k}_mean": float(np.mean([C.auroc(r["alternatives"][k], r["is_known"]) for r in runs]))
           for k in first["alternatives"]},
        "precision_at_95_recall_val_pooled": C.precision_at_recall(vc, vk, 0.95),
        "ece_top1_val_pooled": C.ece(vc, vr), "ece_if_perfectly_calibrated_pooled": C.ece_sampling_floor(vc),
        "mean_confidence_val": float(vc.mean()), "top1_right_val": float(vr.mean()),
        "accepted_fraction_val": float(accepted.mean()),
        "precision_of_accepted_val": float(vr[accepted].mean()) if accepted.any() else None,
        "top1_known_eval": float(cat["right"][cat["is_known"]].mean()),
        "multiview_groups": len(mv["score"]),  # None, not NaN (invalid JSON), when there is nothing to score
        "top1_single_view": float(np.mean(mv["single"])) if mv["single"] else None,
        "top1_fused_score": float(np.mean(mv["score"])) if mv["score"] else None,
        "top1_fused_embedding": float(np.mean(mv["embedding"])) if mv["embedding"] else None,
        "gate_first_run": first["gate"], "calibration_first_run": first["calibration"].to_dict(),
    }
