"""Dataset layouts and split files that are wrong in ways a benchmark would not notice (found by a data-layer
audit): each is refused with a line-numbered error, or warned about and recorded, never used silently."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.errors import InputError, IntegrityError
from training.data import load_dataset

from .conftest import make_folder
from .test_data_eval import _write_grocery


def test_grocery_image_in_both_train_and_val_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "g"
    _write_grocery(root)
    with open(root / "train.txt", "a") as fh:
        fh.write("val/c0/000.jpg, 0, 0\n")  # a validation photo also trained on
    with pytest.raises(InputError, match=r"1 image\(s\) listed in both train.txt and val.txt.*val/c0/000.jpg"):
        load_dataset(root)
    root = tmp_path / "g2"
    _write_grocery(root)
    with open(root / "val.txt", "a") as fh:
        fh.write("val/c1/001.jpg, 1, 1\n")  # scored twice
    with pytest.raises(InputError, match=r"val.txt:5: val/c1/001.jpg is already listed on line 4"):
        load_dataset(root)


@pytest.mark.parametrize("row, match", [
    ("Bad,notanint,X,0,,", r"classes.csv:4: expected 'class name, fine id, coarse id"),
    ("Short,2", r"classes.csv:4: expected"),
    ("Dup,1,Veg,1,,", r"classes.csv:4: class id 1 is already used on line 3"),
])
def test_grocery_classes_csv_problems_name_their_line(tmp_path: Path, row: str, match: str) -> None:
    root = tmp_path / "g"
    _write_grocery(root)
    with open(root / "classes.csv", "a") as fh:
        fh.write(row + "\n")
    with pytest.raises(InputError, match=match):
        load_dataset(root)


def test_folder_layout_skips_hidden_and_thumbnail_folders_and_names_unread_types(tmp_path: Path, caplog) -> None:
    root = make_folder(tmp_path / "d", n_classes=2, per_class=2)
    for junk in ("c0/.thumbs/t.jpg", "c0/@eaDir/000.jpg/SYNOPHOTO_THUMB_S.jpg", "c1/._000.jpg"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / junk, format="JPEG")
    (root / "c1" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with caplog.at_level(logging.WARNING, logger="edge_app.imageio"):
        ds = load_dataset(root)
    assert sorted(p for p, _ in ds.images.items) == ["c0/000.jpg", "c0/001.jpg", "c1/000.jpg", "c1/001.jpg"]
    assert "1 file(s) not read as images (1 .heic" in caplog.text


def test_audit_says_when_it_could_not_use_labels_and_audits_a_single_file(tmp_path: Path, caplog) -> None:
    from training.audit import audit

    root = make_folder(tmp_path / "d", n_classes=2, per_class=2)
    assert audit(root).summary()["labelled"] is True
    (root / "empty-class").mkdir()  # not a loadable dataset any more
    with caplog.at_level(logging.WARNING, logger="training.audit"):
        rep = audit(root)
    assert rep.summary()["labelled"] is False and "empty-class" in rep.unlabelled_because
    assert "near-duplicates across labels cannot be found" in caplog.text
    one = audit(root / "c0" / "000.jpg")
    assert one.n_images == 1 and one.unreadable == [] and one.duplicate_pairs == []


def test_tiny_images_do_not_crash_the_training_transform() -> None:
    import torch

    from training.augment import AugmentConfig, TrainTransform
    from training.models import create_model

    spec = create_model("tiny", 2, pretrained=False, image_size=32).preprocess
    t = TrainTransform(spec, AugmentConfig(perspective_p=1.0))
    for size in ((1, 1), (2, 2), (1, 500), (3, 1), (8, 2), (15, 15)):
        for seed in range(12):
            torch.manual_seed(seed)
            out = t(Image.new("RGB", size, (200, 10, 10)))
            assert out.shape == (3, 32, 32) and np.isfinite(out).all()


def _split_doc(tmp_path: Path) -> tuple[Path, dict]:
    from training.splits import make_split, write_split

    root = make_folder(tmp_path / "d", n_classes=2, per_class=6)
    doc = make_split(root, val_fraction=0.34, seed=0, name="d")
    write_split(doc, tmp_path / "split.json")
    return root, doc


def _rehash(doc: dict, path: Path) -> None:
    from training.splits import content_sha256

    doc["sha256"] = content_sha256(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(val="x"), "'val' must be a list of"),
    (lambda d: d.pop("train"), "'train' must be a list of"),
    (lambda d: d["val"].append(d["val"][0]), "listed twice in 'val'"),
])
def test_malformed_split_files_with_a_correct_hash_are_refused(tmp_path: Path, edit, match: str) -> None:
    from training.splits import load_split

    root, doc = _split_doc(tmp_path)
    edit(doc)
    _rehash(doc, tmp_path / "bad.json")
    with pytest.raises(IntegrityError, match=match):
        load_split(tmp_path / "bad.json", root)


def test_images_added_after_the_split_are_warned_about(tmp_path: Path, caplog) -> None:
    from training.splits import load_split

    root, _ = _split_doc(tmp_path)
    shutil.copy(root / "c0" / "000.jpg", root / "c0" / "added-later.jpg")
    with caplog.at_level(logging.WARNING, logger="training.splits"):
        s = load_split(tmp_path / "split.json", root)
    assert len(s.train) + len(s.val) == 12
    assert "1 image(s) of the dataset" in caplog.text and "c0/added-later.jpg" in caplog.text


def test_a_validation_catalogue_image_is_left_out_of_its_own_ranking_only(tmp_path: Path) -> None:
    """Parts layout: a catalogue image the split put in validation found itself at cosine 1.0; it must still
    be in the gallery for its part's other validation photos."""
    from training.evaluate import _val_and_galleries

    root = tmp_path / "p"
    make_folder(root / "images", n_classes=2, per_class=4)
    (root / "parts.csv").write_text("part_number,name\nc0,A\nc1,B\n")
    rows = ["path,part_number,kind"] + [f"images/c{k}/{i:03d}.jpg,c{k},{'catalogue' if i < 2 else 'field'}"
                                        for k in range(2) for i in range(4)]
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    from training.splits import SPLIT_FORMAT

    ds = load_dataset(root)
    labels = ds.images.labels
    val = [["images/c0/000.jpg", "c0"], ["images/c1/002.jpg", "c1"]]
    train = [[p, labels[y]] for p, y in ds.images.items if [p, labels[y]] not in val]
    _rehash({"format": SPLIT_FORMAT, "dataset": "p", "labels": labels, "train": train, "val": val},
            tmp_path / "s.json")
    v, galleries, info = _val_and_galleries({}, root, str(tmp_path / "s.json"), "auto")
    assert len(galleries["catalogue"]) == 4  # all catalogue images stay
    from training.evaluate import _same_images
    from training.metrics import retrieval_metrics

    qpaths, gpaths = [p for p, _ in v.items], [p for p, _ in galleries["catalogue"].items]
    same = _same_images(qpaths, gpaths)
    assert same.sum() == 1 and same[qpaths.index("images/c0/000.jpg"), gpaths.index("images/c0/000.jpg")]
    # embeddings where each image is most like itself, then like its class's other catalogue image
    q_y = np.array([y for _, y in v.items])
    g_y = np.array([y for _, y in galleries["catalogue"].items])
    q = np.stack([np.eye(4)[gpaths.index(p)] if p in gpaths else np.eye(4)[2 * y] * 0.6 + np.eye(4)[2 * y + 1] * 0.8
                  for p, y in v.items]).astype(np.float32)
    g = np.eye(4, dtype=np.float32) * 0.9 + 0.1 * (g_y[:, None] == g_y[None, :])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    with_self = retrieval_metrics(q, q_y, g, g_y)
    without = retrieval_metrics(q, q_y, g, g_y, same=same)
    assert without["n_self_excluded"] == 1 and without["n_gallery"] == 4
    assert with_self["recall@1"] == 1.0 and without["recall@1"] == 1.0  # its class's other image still ranks first
    ranked_self = (q @ g.T)[qpaths.index("images/c0/000.jpg")].argmax()
    assert gpaths[ranked_self] == "images/c0/000.jpg"  # (without the mask it would have matched itself)


def _parts_dataset(root: Path, per_class: int = 6) -> Path:
    make_folder(root / "images", n_classes=2, per_class=per_class, size=32)
    (root / "parts.csv").write_text("part_number,name\nc0,A\nc1,B\n")
    rows = ["path,part_number,kind"] + [f"images/c{k}/{i:03d}.jpg,c{k},{'catalogue' if i == 0 else 'field'}"
                                        for k in range(2) for i in range(per_class)]
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cached_pk_catalogue_training_survives_an_unreadable_photo_and_evaluate_flags_seen_images(
        tmp_path: Path, caplog) -> None:
    """The catalogue flags were computed before the cache dropped an unreadable photo (a misleading 'needs
    catalogue images' error); evaluating on another split did not say its val images had been trained on."""
    from training.config import TrainConfig
    from training.evaluate import evaluate_checkpoint
    from training.splits import make_split, write_split
    from training.train import train

    root = _parts_dataset(tmp_path / "p")
    (root / "images" / "c0" / "003.jpg").write_bytes(b"")  # a photo that cannot be read
    # seed 1 puts part c0's catalogue image in validation (seed 0 does not)
    write_split(make_split(root, val_fraction=0.34, seed=1, name="p"), tmp_path / "s0.json")
    write_split(make_split(root, val_fraction=0.34, seed=0, name="p"), tmp_path / "s1.json")
    train(TrainConfig(data=str(root), out=str(tmp_path / "run"), model="tiny", epochs=1, batch_size=4, pk_k=2,
                      image_size=32, pretrained=False, split=str(tmp_path / "s0.json"), cache=True,
                      gallery_repeats=1, sampler="pk_catalogue", progress=False))
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        rep = evaluate_checkpoint(tmp_path / "run" / "best.pt", split=str(tmp_path / "s1.json"), figures=False)
    s0 = json.loads((tmp_path / "s0.json").read_text())
    trained = {p for p, _ in s0["train"]}
    expected = sum(1 for p, _ in json.loads((tmp_path / "s1.json").read_text())["val"] if p in trained)
    assert expected > 0 and rep["split"]["val_seen_in_training"] == expected
    assert f"{expected} of the" in caplog.text and "were training images of this checkpoint" in caplog.text
    own = evaluate_checkpoint(tmp_path / "run" / "best.pt", figures=False)
    assert "val_seen_in_training" not in own["split"]
    val_catalogue = sum(1 for p, _ in s0["val"] if p.endswith("/000.jpg"))  # image 000 is each part's catalogue
    assert val_catalogue == 1 and own["retrieval"]["catalogue"]["n_self_excluded"] == 1
    assert own["retrieval"]["catalogue"]["n_gallery"] == 2


# -- found by an audit of the data side (20th session) -------------------------------------------------------
def test_grocery_lists_see_through_path_spellings_a_bom_and_bad_bytes(tmp_path: Path) -> None:
    root = tmp_path / "g"
    _write_grocery(root)
    train = (root / "train.txt").read_text()
    (root / "train.txt").write_text("\ufeff" + train, encoding="utf-8")  # Windows Notepad: the first image was lost
    assert sorted(p for p, _ in load_dataset(root).train.items)[0] == "train/c0/000.jpg"
    assert len(load_dataset(root).train.items) == 6
    for spelling in ("./val/c0/000.jpg", "val//c0/000.jpg"):  # a val photo trained on under another spelling
        (root / "train.txt").write_text(train + f"{spelling}, 0, 0\n")
        with pytest.raises(InputError, match=r"listed in both train.txt and val.txt.*val/c0/000.jpg"):
            load_dataset(root)
    (root / "train.txt").write_text(train + "./train/c0/000.jpg, 0, 0\n")
    with pytest.raises(InputError, match=r"train.txt:7: train/c0/000.jpg is already listed on line 1"):
        load_dataset(root)
    (root / "train.txt").write_text(train + "train\\c0\\000.jpg, 0, 0\n")
    with pytest.raises(InputError, match=r"train.txt:7: .* uses backslashes"):
        load_dataset(root)
    (root / "train.txt").write_text(train + "../outside.jpg, 0, 0\n")
    with pytest.raises(InputError, match="not a path inside the dataset folder"):
        load_dataset(root)
    (root / "train.txt").write_bytes(train.encode() + b"train/c0/\xff.jpg, 0, 0\n")
    with pytest.raises(InputError, match="train.txt: not UTF-8 text"):
        load_dataset(root)


def test_parts_layout_refuses_an_image_listed_twice(tmp_path: Path) -> None:
    """A split of it was written, then refused by its own reader ("listed twice in 'val'")."""
    root = tmp_path / "p"
    make_folder(root / "images", n_classes=2, per_class=2)
    (root / "parts.csv").write_text("part_number,name\nc0,A\nc1,B\n")
    rows = ["path,part_number,kind", "images/c0/000.jpg,c0,catalogue", "images/c0/001.jpg,c0,field",
            "images/c1/000.jpg,c1,catalogue", "./images/c0/001.jpg,c1,field"]
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"images.csv:5: images/c0/001.jpg is already listed on line 3"):
        load_dataset(root)


def test_a_split_names_classes_left_without_validation_images(tmp_path: Path, caplog) -> None:
    from training.splits import make_split

    root = make_folder(tmp_path / "d", n_classes=3, per_class=6)
    for f in sorted((root / "c2").iterdir())[1:]:
        f.unlink()  # one image: never validated
    with caplog.at_level(logging.WARNING, logger="training.splits"):
        doc = make_split(root, seed=0)
    assert "c2" not in doc["counts"]["val_per_class"]
    assert "1 class(es) have no validation image" in caplog.text and "c2" in caplog.text


def test_iconic_paths_are_read_in_the_spelling_of_the_lists(tmp_path: Path) -> None:
    """A val image that is also an iconic image spelled ./iconic/x.jpg in classes.csv was not recognised as itself
    (it matched itself in the catalogue gallery, and could be trained on as a gallery image)."""
    root = tmp_path / "g"
    _write_grocery(root)
    text = (root / "classes.csv").read_text().replace("/iconic/c0.jpg", "./iconic//c0.jpg")
    (root / "classes.csv").write_text(text)
    assert sorted(p for p, _ in load_dataset(root).gallery.items) == ["iconic/c0.jpg", "iconic/c1.jpg"]


def test_wrong_folder_layouts_are_refused_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    """An audit: --data one level too high trained one class (val top-1 1.0 by construction), a dataset already
    split into train/ and val/ trained the classes "train" and "val", and a class folder that could not be read
    was "a class folder with no images"."""
    import os

    make_folder(tmp_path / "high" / "photos", n_classes=2, per_class=2)
    with pytest.raises(InputError, match=r"one class folder \(photos\).*one level too high"):
        load_dataset(tmp_path / "high")
    for subset in ("train", "val"):
        make_folder(tmp_path / "presplit" / subset, n_classes=2, per_class=2)
    with pytest.raises(InputError, match=r"already split into subsets.*--data .*presplit/train"):
        load_dataset(tmp_path / "presplit")
    root = make_folder(tmp_path / "ok", n_classes=2, per_class=2)
    assert load_dataset(root).images.labels == ["c0", "c1"]
    real_scandir = os.scandir

    def no_permission(path="."):
        if Path(path).name == "c1":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    with pytest.raises(InputError, match=r"ok/c1: cannot be read \(Permission denied\)"):
        load_dataset(root)


def test_the_batch_size_a_sampler_suggests_is_one_it_takes() -> None:
    from edge_app.errors import UsageError
    from training.sampler import BatchSampler

    for n, world, mode in [(30, 1, "pk"), (30, 2, "pk"), (5, 1, "pk"), (30, 1, "random"), (13, 1, "pk")]:
        labels = [i % 3 for i in range(n)]
        with pytest.raises(UsageError, match=r"e\.g\. (\d+)") as exc:
            BatchSampler(labels, 32, mode=mode, world=world)
        import re

        suggested = int(re.search(r"e\.g\. (\d+)", str(exc.value)).group(1))
        assert len(BatchSampler(labels, suggested, mode=mode, world=world)) >= 1  # taken, at least one batch
    with pytest.raises(UsageError, match="add photos"):
        BatchSampler([0, 1, 2], 32, mode="pk")
    with pytest.raises(UsageError, match=r"add photos \(a batch holds at least 2 images per process\)"):
        BatchSampler([0, 1, 0, 1, 0], 32, mode="random", world=3)  # (a review: "e.g. 2" was then refused)
