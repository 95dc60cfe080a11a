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
