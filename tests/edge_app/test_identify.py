"""Acceptance tests of identification on a tiny signed bundle of drawn parts."""
from __future__ import annotations

import numpy as np
import pytest

from edge_app.errors import ImageError, IntegrityError

from . import synthetic as syn
from .conftest import EVAL_KNOWN, EVAL_UNKNOWN


def test_right_part_ranked_first(identifier, world):
    hits = 0
    n = 0
    for pn in EVAL_KNOWN:
        for path in world.field[pn]:
            res = identifier.identify([path], top=3)
            n += 1
            hits += res.matches[0].part_number == pn
    assert hits / n >= 0.95, f"top-1 {hits}/{n}"


def test_result_shows_stock_bin_and_hub_time(identifier, world):
    pn = EVAL_KNOWN[0]
    res = identifier.identify([world.field[pn][0]], top=3)
    m = res.matches[0]
    i = int(pn[1:])
    assert (m.stock, m.bin, m.site) == (i % 3, f"A-{i:02d}", "site_a")
    assert res.hub_time and m.stock_as_of == res.hub_time
    assert res.calibrated and res.status == "match" and res.confidence >= res.threshold


def test_unknown_part_gives_no_confident_match(identifier, world):
    # calibration was fitted on other products; judge on the disjoint evaluation products
    rejected = [identifier.identify([p]).status == "no_confident_match"
                for pn in EVAL_UNKNOWN for p in world.field[pn]]
    accepted = [identifier.identify([p]).status == "match" for pn in EVAL_KNOWN for p in world.field[pn]]
    assert np.mean(rejected) >= 0.8, rejected
    assert np.mean(accepted) >= 0.8, accepted
    assert identifier.calibration.threshold == pytest.approx(world.calibration["threshold"])


def test_multi_view_fuses_into_one_ranking(identifier, world):
    pn = EVAL_KNOWN[2]
    views = world.field[pn]
    res = identifier.identify(views, top=3)
    assert res.views == len(views)
    assert res.matches[0].part_number == pn
    singles = [identifier.identify([v]).matches[0].similarity for v in views]
    # the fused score is the mean of the per-view part scores
    assert res.matches[0].similarity == pytest.approx(np.mean(singles), abs=1e-4)
    emb = identifier.identify(views, top=3)  # embedding fusion gives the same winner here
    identifier.fusion_method = "embedding"
    try:
        assert identifier.identify(views, top=3).matches[0].part_number == emb.matches[0].part_number
    finally:
        identifier.fusion_method = "score"


def test_filters(identifier, world):
    pn = EVAL_KNOWN[1]  # P0011: odd -> fastener, stock_site_a = 11 % 3 = 2
    photo = world.field[pn][0]
    res = identifier.identify([photo], category="gear")
    assert res.matches and all(m.category == "gear" for m in res.matches)
    assert pn not in [m.part_number for m in res.matches]
    res = identifier.identify([photo], text="number 11")
    assert [m.part_number for m in res.matches] == [pn]
    res = identifier.identify([photo], in_stock=True, top=20)
    assert res.matches and all(m.stock and m.stock > 0 for m in res.matches)
    zero_stock = world.field["P0012"][0]  # 12 % 3 == 0: out of stock at site_a
    assert "P0012" not in [m.part_number for m in identifier.identify([zero_stock], in_stock=True, top=20).matches]
    assert "P0012" in [m.part_number for m in identifier.identify([zero_stock], in_stock=True, site="site_b",
                                                                   top=20).matches]



def test_a_filter_does_not_make_a_wrong_part_look_certain(identifier, world):
    """Confidence is judged against every catalogue part the photo could show, not only those a filter left."""
    pn = EVAL_KNOWN[1]
    photo = world.field[pn][0]
    plain = identifier.identify([photo])
    assert plain.status == "match" and plain.matches[0].part_number == pn
    # the right part filtered out, one candidate left: a wrong part, never a confident match
    other = "P0014"
    res = identifier.identify([photo], text=other)
    assert [m.part_number for m in res.matches] == [other]
    assert res.status == "no_confident_match" and res.confidence < 0.05, res.confidence
    # a filter that keeps the right part alone: the same confidence as without the filter
    res = identifier.identify([photo], text="number 11")
    assert [m.part_number for m in res.matches] == [pn]
    assert res.status == "match" and res.confidence == pytest.approx(plain.confidence)
    # a photo of a part outside the catalogue, a filter leaving one candidate: still no confident match
    unknown = world.field[EVAL_UNKNOWN[0]][0]
    res = identifier.identify([unknown], text=plain.matches[0].name)
    assert len(res.matches) == 1 and res.status == "no_confident_match"


def test_a_catalogue_of_one_part_has_no_confident_match(identifier):
    """Nothing to compare the only part with: the margin the calibration needs is undefined."""
    from edge_app.runtime.calibration import Calibration

    cal = Calibration(coef=(10.0, 10.0), intercept=0.0, threshold=0.5)
    assert cal.confidence([0.9, 0.9], [0.1, float("nan")]).tolist() == [pytest.approx(1.0), 0.0]
    # no second part in the whole catalogue: no runner-up, so no confidence (the identifier shows the part,
    # says "no confident match")
    assert identifier._runner_up(np.zeros((1, 8), np.float32), ["P0001"], np.array([0.9], np.float32),
                                 filtered=False) is None


def test_look_alikes_differing_in_size_ask_for_scale_photo(identifier, world):
    res = identifier.identify([world.field["P0018"][0]], top=3)
    assert res.needs_scale_photo
    assert set(res.look_alike["part_numbers"]) == {"P0018", "P0019"}
    assert sorted(res.look_alike["sizes_mm"]) == [8.0, 12.0]
    assert not identifier.identify([world.field["P0010"][0]], top=3).needs_scale_photo


def test_same_size_look_alikes_ask_for_a_detail_photo_instead() -> None:
    from edge_app.runtime.identify import Identifier, PartMatch

    def pm(rank, pn, sim, size, group="relay"):
        return PartMatch(rank=rank, part_number=pn, name=None, category=None, similarity=sim, confidence=None,
                         best_image_id=None, size_mm=size, look_alike_group=group)

    relays = [pm(1, "RLY-24V", 0.90, 28.0), pm(2, "RLY-12V", 0.88, 28.0), pm(3, "GEAR", 0.5, 20.0, None)]
    look = Identifier._look_alike(relays)
    assert look == {"group": "relay", "part_numbers": ["RLY-24V", "RLY-12V"], "sizes_mm": [28.0, 28.0],
                    "differ_by": "detail"}
    # a size difference among the close candidates wins: a measurement settles it
    mixed = [pm(1, "NUT-M8", 0.9, 13.0, "nut"), pm(2, "NUT-M8-B", 0.89, 13.0, "nut"), pm(3, "NUT-M10", 0.88, 17.0, "nut")]
    assert Identifier._look_alike(mixed)["differ_by"] == "size"
    assert Identifier._look_alike(mixed)["part_numbers"] == ["NUT-M8", "NUT-M10"]
    far = [pm(1, "RLY-24V", 0.90, 28.0), pm(2, "RLY-12V", 0.70, 28.0)]  # not a close runner-up
    assert Identifier._look_alike(far) is None


def _embedding_of(identifier, path):
    imgs, bad = identifier.decode([path])
    assert not bad, bad
    return identifier.embed(imgs)[0]


def test_bad_images(identifier, world, tmp_path):
    from PIL import Image

    src = syn.draw_part(11, 3, size=120)
    bad = {"corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10, "empty.jpg": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    src.save(tmp_path / "full.jpg", quality=95)
    full = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 MP of zeros: a small file
    for name in ["corrupt.jpg", "empty.jpg", "truncated.jpg", "bomb.png"]:
        with pytest.raises(ImageError) as err:
            identifier.identify([tmp_path / name])
        assert name in str(err.value)
    # a bad view among good ones is skipped and reported, the rest still identify
    res = identifier.identify([tmp_path / "corrupt.jpg", tmp_path / "full.jpg"])
    assert res.views == 1 and res.skipped[0]["path"].endswith("corrupt.jpg")

    ref = _embedding_of(identifier, tmp_path / "full.jpg")
    modes = {
        "cmyk.jpg": lambda: src.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95),
        "16bit.png": lambda: Image.fromarray((np.asarray(src.convert("L"), np.uint16) * 257)).save(
            tmp_path / "16bit.png"),
        "palette.png": lambda: src.convert("P", palette=Image.ADAPTIVE, colors=256).save(tmp_path / "palette.png"),
        "rgba.png": lambda: src.convert("RGBA").save(tmp_path / "rgba.png"),
    }
    for name, make in modes.items():
        make()
        res = identifier.identify([tmp_path / name], top=20)
        assert res.views == 1 and res.matches, name
        emb = _embedding_of(identifier, tmp_path / name)
        if name != "16bit.png":  # grey loses colour; the others must stay close to the RGB original
            assert float(emb @ ref) > 0.97, (name, float(emb @ ref))


def test_exif_rotated_photo_gives_the_upright_embedding(identifier, tmp_path):
    from PIL import Image

    upright = syn.draw_part(13, 1, size=120).resize((160, 120))
    upright.save(tmp_path / "upright.png")
    # store the pixels rotated, with EXIF orientation 6 ("rotate 90 CW to display")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.png", exif=exif.tobytes())
    stored.save(tmp_path / "rotated_no_exif.png")
    a = _embedding_of(identifier, tmp_path / "upright.png")
    b = _embedding_of(identifier, tmp_path / "rotated.png")
    c = _embedding_of(identifier, tmp_path / "rotated_no_exif.png")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(a @ c) < 0.99  # without the EXIF fix the embedding would differ


def test_tampered_bundle_is_refused(world, device_db, tmp_path):
    import shutil

    from edge_app.runtime.identify import Identifier

    copy = tmp_path / world.bundle.name
    shutil.copytree(world.bundle, copy)
    emb = np.load(copy / "embeddings.npy")
    emb[0, 0] += 0.5
    np.save(copy / "embeddings.npy", emb)
    with pytest.raises(IntegrityError):
        Identifier.open(copy, device_db, world.keyring_path, backend="onnx")
    other_key, other_ring = syn.make_keys()
    other_ring.save(tmp_path / "other.json")
    with pytest.raises(IntegrityError):
        Identifier.open(world.bundle, device_db, tmp_path / "other.json", backend="onnx")


def test_stale_index_is_rebuilt_or_updated(world, device_db):
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.runtime.index import index_path

    ident = Identifier.open(world.bundle, device_db, world.keyring_path, backend="onnx")
    photo = world.field["P0014"][0]
    assert ident.identify([photo]).matches[0].part_number == "P0014"
    db = ident.db
    # a sync delta deletes P0014 and bumps the catalogue version
    with db.transaction():
        db.delete_parts(["P0014"])
        db.set_meta("catalogue_version", db.catalogue_version + 1)
    res = ident.identify([photo], top=5)
    assert "P0014" not in [m.part_number for m in res.matches]
    assert ident.index.stamp.catalogue_version == db.catalogue_version
    assert db.get_meta("index_stamp") == str(ident.index.stamp)
    # a cache written for another bundle is rebuilt on open
    path = index_path(device_db, ident.bundle_id)
    side = path.with_name(path.name + ".json")
    import json

    meta = json.loads(side.read_text())
    meta["bundle_id"] = "v9-000000000000"
    side.write_text(json.dumps(meta))
    ident2 = Identifier.open(world.bundle, device_db, world.keyring_path, backend="onnx")
    assert ident2.index.stamp.bundle_id == ident.bundle_id
    assert len(ident2.index) == CatalogueDB(device_db).count("embeddings")


def test_uncalibrated_bundle_is_flagged(world, device_db):
    from edge_app.runtime.identify import Identifier

    ident = Identifier.open(world.uncalibrated, device_db, world.keyring_path, backend="onnx")
    res = ident.identify([world.field["P0010"][0]])
    assert res.calibrated is False


# -- found by fuzzing the ranking against brute force (17th session) --------------------------------------------
def _replace_catalogue(ident, parts: dict[str, np.ndarray]) -> None:
    """The device catalogue holds exactly ``parts`` (part number -> its image vectors) for the bundle's model."""
    db = ident.db
    with db.transaction():
        db.delete_parts([r["part_number"] for r in db.search_parts(limit=None)])
        db.upsert_parts([{"part_number": pn, "name": pn, "version": 1} for pn in parts])
        ids, vecs = [], []
        for pn, v in parts.items():
            rows = [{"image_id": f"{pn}-{i}", "part_number": pn, "kind": "catalogue"} for i in range(len(v))]
            db.upsert_images(rows)
            ids += [r["image_id"] for r in rows]
            vecs.append(v)
        db.upsert_embeddings(ids, np.concatenate(vecs).astype(np.float32), ident.bundle_id)
        db.set_meta("catalogue_version", db.catalogue_version + 1)
    assert ident.refresh()


def _brute(ident, q: np.ndarray, parts: dict[str, np.ndarray]) -> list[str]:
    from edge_app.runtime import fusion

    fused = {pn: float(np.mean([fusion.aggregate_images((view[None] @ v.T), ident.aggregate)[0] for view in q]))
             for pn, v in parts.items()}
    return sorted(fused, key=lambda pn: -fused[pn])


def _unit(*pairs, dim: int) -> np.ndarray:
    v = np.zeros(dim)
    for axis, value in pairs:
        v[axis] = value
    return v / np.linalg.norm(v)


def test_parts_with_many_images_do_not_crowd_the_others_out_of_the_ranking(identifier):
    dim = identifier.bundle.embedding_dim
    rng = np.random.default_rng(0)
    q = _unit((0, 1.0), dim=dim)[None].astype(np.float32)
    big = np.stack([_unit((0, 0.98), (1, np.sqrt(1 - 0.98 ** 2)), (2 + i % 3, 1e-3), dim=dim) for i in range(100)])
    parts = {"BIG": big, "TWIN": _unit((0, 0.95), (5, np.sqrt(1 - 0.95 ** 2)), dim=dim)[None]}
    for i in range(8):
        parts[f"OTHER{i}"] = _unit((0, 0.5 - 0.02 * i), (6 + i, 0.8), dim=dim)[None] + rng.normal(0, 1e-4, (1, dim))
    _replace_catalogue(identifier, parts)
    names, scores, _ = identifier.rank(q, top=5)
    assert names[:6] == _brute(identifier, q, parts)[:6]  # was ["BIG"] alone: 100 images filled the image budget
    assert names[1] == "TWIN" and scores[1] == pytest.approx(0.95, abs=1e-3)


def test_views_that_disagree_still_find_the_part_both_agree_on(identifier):
    dim = identifier.bundle.embedding_dim
    q = np.stack([_unit((0, 1.0), dim=dim), _unit((1, 1.0), dim=dim)]).astype(np.float32)
    parts = {f"A{i}": _unit((0, 0.9), (2 + i, np.sqrt(1 - 0.81)), dim=dim)[None] for i in range(10)}
    parts |= {f"B{i}": _unit((1, 0.9), (12 + i, np.sqrt(1 - 0.81)), dim=dim)[None] for i in range(10)}
    parts["X"] = _unit((0, 0.7), (1, 0.7), (22, np.sqrt(1 - 0.98)), dim=dim)[None]
    _replace_catalogue(identifier, parts)
    names, scores, _ = identifier.rank(q, top=5, fusion_method="score", aggregate="max")
    assert names[0] == "X" == _brute(identifier, q, parts)[0]  # X was not among either view's 10 best parts
    assert scores[0] == pytest.approx(0.7, abs=1e-3)


def test_a_catalogue_replaced_at_the_same_version_by_another_process_is_reloaded(identifier, tmp_path):
    import subprocess
    import sys

    dim = identifier.bundle.embedding_dim
    old = {f"OLD{i}": _unit((i, 1.0), dim=dim)[None] for i in range(5)}
    _replace_catalogue(identifier, old)
    version = identifier.db.catalogue_version
    # another process (the nightly sync) swaps the whole catalogue at the same version
    code = f"""
import numpy as np
from edge_app.runtime.catalogue import CatalogueDB
db = CatalogueDB({str(identifier.db.path)!r})
with db.transaction():
    db.delete_parts(["OLD0", "OLD1", "OLD2", "OLD3", "OLD4"])
    db.upsert_parts([{{"part_number": "NEW0", "name": "n", "version": 1}}])
    db.upsert_images([{{"image_id": "n0", "part_number": "NEW0", "kind": "catalogue"}}])
    v = np.zeros((1, {dim}), np.float32); v[0, 7] = 1
    db.upsert_embeddings(["n0"], v, {identifier.bundle_id!r})
    db.set_meta("catalogue_version", {version})
    db.set_meta("catalogue_epoch", 1)
db.close()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    q = _unit((7, 1.0), dim=dim)[None].astype(np.float32)
    assert identifier.refresh()  # was False: same version, and the old labels kept answering
    names, _, _ = identifier.rank(q, top=1)
    assert names == ["NEW0"]


def test_scoring_all_candidates_in_one_product_equals_scoring_each_part() -> None:
    from edge_app.runtime import fusion

    rng = np.random.default_rng(0)
    for trial in range(300):
        views, dim, n_parts = int(rng.integers(1, 4)), 8, int(rng.integers(1, 12))
        vecs = {f"p{j}": rng.normal(size=(int(rng.integers(1, 6)), dim)).astype(np.float32) for j in range(n_parts)}
        q = rng.normal(size=(views, dim)).astype(np.float32)
        for aggregate in ("max", "top2"):
            scores, best = fusion.score_parts(q, list(vecs), vecs, aggregate)
            for j, pn in enumerate(vecs):
                sims = q @ vecs[pn].T
                assert np.allclose(scores[:, j], fusion.aggregate_images(sims, aggregate), atol=1e-5)
                assert np.allclose(sims[np.arange(views), best[:, j]], sims.max(axis=1), atol=1e-5)


def test_parts_imported_after_the_first_open_get_the_bundles_vectors(world, tmp_path):
    """Found by an audit: a catalogue first imported with 10 parts skipped the bundle's vectors of the others, and
    importing the full parts list later never added them (the part could not be found until the vectors were
    deleted by hand)."""
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.runtime.importer import import_catalogue

    pn = EVAL_KNOWN[1]  # P0011
    first = tmp_path / "first10.csv"
    lines = world.cat.parts_csv.read_text("utf-8").splitlines(keepends=True)
    first.write_text("".join(lines[:11]), "utf-8")
    assert pn not in first.read_text()
    db_path = tmp_path / "catalogue.db"
    with CatalogueDB(db_path) as db:
        with db.transaction():
            db.set_meta("site", "site_a")
        import_catalogue(db, first)
    ident = Identifier.open(world.bundle, db_path, world.keyring_path, backend="onnx")
    assert pn not in [m.part_number for m in ident.identify([world.field[pn][0]], top=5).matches]
    # opened again at the same catalogue version: no re-reading of the bundle's rows (cold start; a review)
    import unittest.mock as mock

    with mock.patch.object(type(ident.bundle), "load_catalogue_rows", side_effect=AssertionError("re-read")):
        Identifier.open(world.bundle, db_path, world.keyring_path, backend="onnx")
    n_first = ident.db.db.conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    with CatalogueDB(db_path) as db:
        import_catalogue(db, world.cat.parts_csv, world.cat.images_csv)
    ident = Identifier.open(world.bundle, db_path, world.keyring_path, backend="onnx")
    n_all = ident.db.db.conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert n_all > n_first
    assert ident.identify([world.field[pn][0]]).matches[0].part_number == pn
    assert ident.import_bundle_embeddings() == 0  # nothing left to add: opening again writes nothing


def test_a_catalogue_a_hub_keeps_is_never_embedded_on_the_device(world, identifier):
    """Its vectors come from the hub with the sync: no warning about them, and embedding here is refused."""
    from edge_app.errors import UsageError

    assert identifier.missing_vectors()[1] == 10  # the 10 parts the bundle does not carry
    with identifier.db.transaction():
        identifier.db.set_meta("hub_id", "hub-1")
    assert identifier.missing_vectors() == (0, 0)
    with pytest.raises(UsageError, match="kept by a hub"):
        identifier.embed_local_images()


def test_vectors_made_on_the_device_do_not_hide_bundle_vectors_of_parts_imported_later(world, tmp_path):
    """Found by a review: once `catalogue embed` had stored device-made vectors, the "every bundle vector is
    stored" shortcut counted them as the bundle's, and parts imported later never got their bundle vectors."""
    import csv

    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.runtime.importer import import_catalogue

    def subset(src, out, keep):
        rows = list(csv.DictReader(src.open(encoding="utf-8")))
        with out.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if keep(r["part_number"]))
        return out

    later = {f"P00{i}" for i in range(15, 20)}
    img_dir = world.cat.images_csv.parent
    parts = subset(world.cat.parts_csv, img_dir / "parts_first.csv", lambda pn: pn not in later)
    images = subset(world.cat.images_csv, img_dir / "images_first.csv", lambda pn: pn not in later)
    db_path = tmp_path / "catalogue.db"
    with CatalogueDB(db_path) as db:
        import_catalogue(db, parts, images)
    ident = Identifier.open(world.bundle, db_path, world.keyring_path, backend="onnx")
    assert ident.embed_local_images() > 0 and ident.missing_vectors() == (0, 0)  # the 10 parts not in the bundle
    with CatalogueDB(db_path) as db:
        import_catalogue(db, world.cat.parts_csv, world.cat.images_csv)
    ident = Identifier.open(world.bundle, db_path, world.keyring_path, backend="onnx")
    assert ident.missing_vectors() == (0, 0)  # was (10, 5): P0015-P0019's vectors are in the bundle
    assert ident.identify([world.field["P0016"][0]]).matches[0].part_number == "P0016"
