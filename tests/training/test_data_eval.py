"""Dataset layouts, transforms, and evaluation metrics on cases with known answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.errors import InputError
from edge_app.preprocess import PreprocessSpec, preprocess_image
from training.augment import AugmentConfig, TrainTransform
from training.data import TorchImageDataset, collate_skip, load_dataset
from training.metrics import classification_metrics, retrieval_metrics

from .conftest import make_folder


def test_folder_layout_and_unreadable_skipped(tiny_folder: Path) -> None:
    (tiny_folder / "c1" / "bad.jpg").write_bytes(b"junk")
    ds = load_dataset(tiny_folder)
    assert ds.layout == "folder" and ds.images.labels == ["c0", "c1", "c2"] and len(ds.images) == 49
    spec = PreprocessSpec(size=(32, 32))
    eval_ds = TorchImageDataset(ds.images, spec)
    items = [eval_ds[i] for i in range(len(eval_ds))]
    assert sum(it is None for it in items) == 1
    assert eval_ds.skipped[0][0] == "c1/bad.jpg" and "not a recognised image" in eval_ds.skipped[0][1]
    x, y, idx = collate_skip(items[:20])
    assert x.shape[1:] == (3, 32, 32) and len(y) == len(idx)
    cached = TorchImageDataset(ds.images, spec, cache=True)
    assert len(cached) == 48 and cached.skipped == [("c1/bad.jpg", eval_ds.skipped[0][1])]


def test_eval_transform_is_the_device_function(tiny_folder: Path) -> None:
    from edge_app.imageio import load_image

    ds = load_dataset(tiny_folder).images
    spec = PreprocessSpec(size=(24, 40), resize="letterbox", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    x, _, _ = TorchImageDataset(ds, spec)[3]
    ref = preprocess_image(load_image(ds.path(3), draft_size=spec.draft_size), spec)
    assert np.array_equal(x.numpy(), ref)


def test_train_transform_shape_and_seeded() -> None:
    import torch

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    t = TrainTransform(PreprocessSpec(size=(32, 48)), AugmentConfig(blur_p=1.0, perspective_p=1.0))
    torch.manual_seed(3)
    a = t(img)
    torch.manual_seed(3)
    b = t(img)
    c = t(img)
    assert a.shape == (3, 32, 48) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(b, c)


def _write_grocery(root: Path) -> None:
    make_folder(root / "train", n_classes=2, per_class=3)
    make_folder(root / "val", n_classes=2, per_class=2, seed=1)
    (root / "iconic").mkdir()
    for k in range(2):
        Image.new("RGB", (40, 40), (k * 100, 50, 50)).save(root / "iconic" / f"c{k}.jpg")
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),"
        "Product Description Path (str)\n"
        "Red,0,Fruit,0,/iconic/c0.jpg,/x.txt\nGreen,1,Veg,1,/iconic/c1.jpg,/y.txt\n")
    for split, n in (("train", 3), ("val", 2)):
        lines = [f"{split}/c{k}/{i:03d}.jpg, {k}, {k}" for k in range(2) for i in range(n)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_grocery_layout(tmp_path: Path) -> None:
    root = tmp_path / "g"
    _write_grocery(root)
    ds = load_dataset(root)
    assert ds.layout == "grocery" and ds.images.labels == ["Red", "Green"]
    assert len(ds.train) == 6 and len(ds.val) == 4 and len(ds.gallery) == 2
    assert ds.gallery.items == [("iconic/c0.jpg", 0), ("iconic/c1.jpg", 1)]
    assert ds.extra["coarse"] == {"Red": "Fruit", "Green": "Veg"}
    (root / "val.txt").write_text("val/c0/000.jpg, 7, 0\n")
    with pytest.raises(InputError, match="class id 7"):
        load_dataset(root)


def test_parts_layout(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_folder(root / "images", n_classes=2, per_class=2)
    (root / "parts.csv").write_text("part_number,name\nc0,A\nc1,B\n")
    rows = ["path,part_number,kind,scale_ref,in_hand,seed"]
    rows += [f"images/c{k}/{i:03d}.jpg,c{k},{'catalogue' if i == 0 else 'field'},0,0,0"
             for k in range(2) for i in range(2)]
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(root)
    assert ds.layout == "parts" and len(ds.images) == 4 and len(ds.gallery) == 2
    (root / "images.csv").write_text(rows[0] + "\nimages/x.jpg,ZZZ,field,0,0,0\n")
    with pytest.raises(InputError, match="ZZZ"):
        load_dataset(root)


def test_classification_metrics_known_case() -> None:
    logits = np.array([[3, 2, 1, 0, 0, 0], [0, 3, 2, 1, 0, 0], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], float)
    targets = np.array([0, 2, 0, 0])
    m = classification_metrics(logits, targets, list("abcdef"))
    assert m["top1"] == 0.5  # rows 0 and 3
    assert m["top5"] == 0.75  # row 2 ranks class 0 last
    assert m["per_class"] == {"a": 2 / 3, "c": 0.0}
    assert m["confusion"][2][1] == 1 and m["n"] == 4


def test_retrieval_metrics_known_case() -> None:
    g = np.eye(3, dtype=np.float32)
    gy = np.array([0, 1, 1])
    q = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0.1, 1], [0, 1, 0]], np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qy = np.array([0, 1, 1, 2])
    r = retrieval_metrics(q, qy, g, gy)
    # query 1 (class 1) ranks g0 first -> miss at 1, hit at 5; query 3 (class 2) has no answer
    assert r["recall@1"] == 0.5 and r["recall@5"] == 0.75 and r["n_unanswerable"] == 1
    # APs: q0 1; q1 relevant at ranks 2,3 -> (1/2 + 2/3)/2; q2 relevant at ranks 1,2 -> 1
    assert r["mAP"] == pytest.approx((1 + (0.5 + 2 / 3) / 2 + 1) / 3)


def test_evaluate_cli_writes_report_and_figures(tmp_path: Path, capsys) -> None:
    from edge_app.cli import main
    from training.config import TrainConfig
    from training.train import train

    root = tmp_path / "g"
    _write_grocery(root)
    train(TrainConfig(data=str(root), out=str(tmp_path / "run"), model="tiny", epochs=1, batch_size=4, pk_k=2,
                      image_size=32, progress=False))
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(root), "--out", str(out)]) == 0
    rep = json.loads((out / "evaluation.json").read_text())
    assert rep["n"] == 4 and rep["n_listed"] == 4
    assert set(rep["retrieval"]) == {"train", "catalogue"} and rep["retrieval"]["catalogue"]["n_gallery"] == 2
    for name in ("confusion.png", "predictions.png", "curves.png"):
        assert Image.open(out / name).size[0] > 100
    assert json.loads(capsys.readouterr().out)["n"] == 4
    # without --data: the folder the checkpoint was trained on, the same numbers
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--no-figures"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["n"] == 4 and again["top1"] == rep["top1"] and again["retrieval"] == rep["retrieval"]


def test_with_gallery_adds_catalogue_images_of_trained_classes_only(tmp_path: Path) -> None:
    from training.data import ImageSet, with_gallery

    root = tmp_path / "g"
    _write_grocery(root)
    ds = load_dataset(root)
    # a fold that trains only "Green" (remapped to index 0): Red's iconic image must stay out
    green = ImageSet(root, ["Green"], [(p, 0) for p, y in ds.train.items if y == 1], "fold")
    out, counts = with_gallery(green, ds.gallery, 3)
    assert out.items[:len(green)] == green.items
    assert out.items[len(green):] == [("iconic/c1.jpg", 0)] * 3
    assert counts == {"gallery_images": 1, "gallery_repeats": 3, "gallery_left_out_in_val": 0,
                      "gallery_other_classes": 1}
    # a catalogue image that is in the val set is never trained on
    val = ImageSet(root, ds.train.labels, [("iconic/c0.jpg", 0)], "val")
    out, counts = with_gallery(ds.train, ds.gallery, 2, exclude=val)
    assert ("iconic/c0.jpg", 0) not in out.items and out.items.count(("iconic/c1.jpg", 1)) == 2
    assert counts["gallery_left_out_in_val"] == 1
    assert with_gallery(ds.train, ds.gallery, 0)[0] is ds.train
    with pytest.raises(InputError, match=">= 0"):
        with_gallery(ds.train, ds.gallery, -1)
    with pytest.raises(InputError, match="root"):
        with_gallery(ds.train, ImageSet(tmp_path, ds.gallery.labels, ds.gallery.items), 1)


def test_a_model_giving_nan_is_refused_not_scored(tmp_path: Path, monkeypatch) -> None:
    """Found by an audit: an all-NaN checkpoint was evaluated to top-1 0.25 and mAP 0.42 (NaN scores rank in
    gallery order, and the gallery is sorted by class)."""
    import training.predict as P
    from edge_app.errors import IntegrityError
    from training.data import ImageSet
    from training.evaluate import evaluate_model

    logits = np.array([[0.0, 1.0], [np.nan, 0.5], [1.0, 0.0]], dtype=np.float32)
    emb = np.ones((3, 4), dtype=np.float32) / 2
    fake = P.Predictions(logits, emb, np.array([1, 0, 0]), ["a.jpg", "b.jpg", "c.jpg"])
    monkeypatch.setattr(P, "predict", lambda *a, **k: fake)
    val = ImageSet(tmp_path, ["x", "y"], [("a.jpg", 1), ("b.jpg", 0), ("c.jpg", 0)], "val")
    with pytest.raises(IntegrityError, match="NaN or infinite logits for 1 of the validation images"):
        evaluate_model(object(), val)
    fake.logits[1, 0] = 0.0
    fake.embeddings[2, 0] = np.inf
    with pytest.raises(IntegrityError, match="NaN or infinite embeddings for 1 of the"):
        evaluate_model(object(), val)
    fake.embeddings[2, 0] = 0.5
    report, _ = evaluate_model(object(), val)
    assert report["n"] == 3


def test_top5_of_five_classes_or_fewer_says_it_is_one_by_construction() -> None:
    from training.metrics import classification_metrics

    rng = np.random.default_rng(0)
    few = classification_metrics(rng.normal(size=(8, 3)), np.arange(8) % 3, ["a", "b", "c"])
    assert few["top5"] == 1.0 and "by construction with 3 classes" in few["top5_note"]
    many = classification_metrics(rng.normal(size=(8, 6)), np.arange(8) % 6, list("abcdef"))
    assert "top5_note" not in many
