"""The hub's look-alike warning: parts the active model cannot tell apart after a part is added."""
from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from sync.hub.lookalike import DEFAULT_OWN, find_look_alikes, own_similarity

from .helpers import part_image


def _photos(centre: np.ndarray, n: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    v = centre + spread * rng.normal(size=(n, len(centre)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_flags_only_parts_as_close_as_photos_of_one_part() -> None:
    rng = np.random.default_rng(0)
    d = 32
    base = rng.normal(size=(3, d))
    common = rng.normal(size=d) * 3  # a model whose embeddings all share a direction (high cosines everywhere)
    a = _photos(common + base[0], 3, 0.3, rng)
    twin = _photos(common + base[0] + 0.05 * rng.normal(size=d), 2, 0.3, rng)  # a new part, same look
    c = _photos(common + base[1], 3, 0.3, rng)
    single = _photos(common + base[2], 1, 0.0, rng)
    vectors = {"A": a, "TWIN": twin, "C": c, "S": single}
    own = own_similarity(vectors)
    assert own["S"] == pytest.approx(float(np.median([own["A"], own["TWIN"], own["C"]])))
    found = find_look_alikes(vectors)
    assert [(f.part_number, f.looks_like) for f in found] == [("A", "TWIN")]
    assert found[0].similarity >= found[0].own and not found[0].same_group
    # distinct parts are similar here in absolute terms (shared direction) but not flagged
    assert float((c @ a.T).max()) > 0.5
    # focus on one part: the pair is reported from its side; a group shared by both marks it as expected
    only = find_look_alikes(vectors, parts=["TWIN"], groups={"A": "relay", "TWIN": "relay"})
    assert [(f.part_number, f.looks_like, f.same_group) for f in only] == [("TWIN", "A", True)]
    assert "TWIN looks like A" in only[0].message() and "expected" in only[0].message()
    assert find_look_alikes(vectors, parts=["C"]) == []


def test_a_part_with_diverse_photos_does_not_flag_everything() -> None:
    """Front and side views of one part are far apart; that spread must not make every part its look-alike."""
    diverse = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # own similarity 0.0
    tight = np.array([[0.6, 0.0, 0.8], [0.62, 0.0, 0.78]])  # own ~1.0, cosine 0.6 to the diverse part
    assert find_look_alikes({"D": diverse, "T": tight}) == []


def test_single_photo_parts_use_the_default_bar() -> None:
    v = {"X": np.array([[1.0, 0.0]]), "Y": np.array([[0.95, 0.312]])}  # cosine 0.95 >= DEFAULT_OWN
    assert own_similarity(v) == {"X": DEFAULT_OWN, "Y": DEFAULT_OWN}
    assert [(f.part_number, f.looks_like) for f in find_look_alikes(v)] == [("X", "Y")]
    assert find_look_alikes({"X": np.array([[1.0, 0.0]]), "Y": np.array([[0.0, 1.0]])}) == []
    assert find_look_alikes({"X": np.zeros((0, 2)), "Y": np.array([[0.0, 1.0]])}) == []


def test_hub_warns_when_an_added_part_looks_like_a_known_one(world, tmp_path, monkeypatch) -> None:
    from sync import commands

    hub = world.hub
    twin = tmp_path / "twin.jpg"
    twin.write_bytes(part_image(0, noise=6.0))  # P0's pattern, photographed again
    other = [tmp_path / "p9a.jpg", tmp_path / "p9b.jpg"]
    other[0].write_bytes(part_image(9))
    side = Image.blend(Image.open(other[0]).convert("RGB"), Image.open(io.BytesIO(part_image(19))).convert("RGB"), 0.3)
    side.save(other[1], "JPEG", quality=92)  # a second view of P9: its photos differ (own similarity < 1)
    hub.add_part({"part_number": "P0-NEW", "name": "new part", "category": "bolt"}, images=[twin])
    hub.add_part({"part_number": "P9", "name": "distinct part", "category": "bolt"}, images=other)
    found = hub.look_alikes(["P0-NEW"])
    assert [(f["part_number"], f["looks_like"]) for f in found] == [("P0-NEW", "P0")]
    assert found[0]["similarity"] > 0.9 and "P0-NEW looks like P0" in found[0]["message"]
    assert hub.look_alikes(["P9"]) == []
    # the CLI: --fail exits 1 while an unexpected pair exists, 0 once both share a look_alike_group
    monkeypatch.setattr(commands, "_open_hub", lambda args: hub)
    args = argparse.Namespace(hub=None, part=None, fail=True)
    assert commands._look_alikes(args) == 1
    for pn in ("P0", "P0-NEW"):
        hub.add_part({"part_number": pn, "name": pn, "category": "bolt", "look_alike_group": "pattern-0"})
    assert commands._look_alikes(args) == 0
    assert hub.look_alikes(["P0-NEW"])[0]["same_group"] is True


def test_import_logs_a_few_pairs_then_one_summary_line(caplog) -> None:
    """A first import with many look-alike series must not log one line per pair."""
    import logging

    from sync.hub import hub as H

    found = [{"same_group": i % 3 == 0, "message": f"pair {i}"} for i in range(30)]
    with caplog.at_level(logging.WARNING, logger=H.__name__):
        H._log_look_alikes(found)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:H.LOOK_ALIKE_LOG_LINES] == ["pair 1", "pair 2", "pair 4", "pair 5", "pair 7"]
    assert len(lines) == H.LOOK_ALIKE_LOG_LINES + 1
    assert "15 more look-alike pairs" in lines[-1] and "partlens hub look-alikes" in lines[-1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=H.__name__):
        H._log_look_alikes(found[:3])
    assert [r.getMessage() for r in caplog.records] == ["pair 1", "pair 2"]


def test_a_catalogue_the_model_sees_as_all_alike_is_reported_in_bounded_size() -> None:
    """An audit: 10k parts whose photos all looked alike to a tiny model made one object per pair (an import ran
    19 min into 11.4 GB and a 200-part import printed 130 MB): each part keeps its few most similar, all counted."""
    import time

    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    vectors = {f"P{i:04d}": _photos(centre, 2, 0.01, rng) for i in range(1500)}
    stats: dict[str, int] = {}
    t0 = time.perf_counter()
    found = find_look_alikes(vectors, stats=stats)
    assert time.perf_counter() - t0 < 20
    assert stats["pairs"] > 500_000  # most pairs are look-alikes here ...
    assert len(found) <= 1500 * 5  # ... and each part reports its five most similar
    per_part: dict[str, list[float]] = {}
    for la in found:
        per_part.setdefault(la.part_number, []).append(la.similarity)
    some = "P0000"  # (the first part: every pair of it is reported from its side)
    best = sorted(find_look_alikes(vectors, parts=[some], per_part=10_000), key=lambda x: -x.similarity)
    assert sorted(per_part[some], reverse=True) == [x.similarity for x in best][:len(per_part[some])]


def test_the_cap_keeps_each_part_s_most_similar_whichever_side_reports_the_pair() -> None:
    """A review: a pair is reported from the part that sorts first, and that part's cap cut it, so a later part's
    most similar look-alikes vanished from the full report while they showed when only that part was asked."""
    eye = np.eye(64)

    def unit(x):
        return x / np.linalg.norm(x)

    def part(c, d, spread=0.1):  # two photos around c
        return np.stack([unit(c * np.cos(spread) + d * np.sin(spread)), unit(c * np.cos(spread) - d * np.sin(spread))])

    vecs = {"A_hub": part(eye[0], eye[1])}
    for k in range(1, 7):  # six close neighbours of A_hub
        vecs[f"N{k}"] = part(unit(eye[0] * np.cos(0.015 * k) + eye[1 + k] * np.sin(0.01 * k)), eye[20 + k])
    vecs["Z_lonely"] = part(unit(eye[0] * np.cos(0.12) + eye[40] * np.sin(0.12)), eye[41])
    alone = find_look_alikes(vecs, parts=["Z_lonely"])
    z_best = {x.looks_like for x in alone}
    assert len(z_best) == 5
    full = find_look_alikes(vecs)
    in_full = {x.part_number if x.looks_like == "Z_lonely" else x.looks_like for x in full
               if "Z_lonely" in (x.part_number, x.looks_like)}
    assert z_best <= in_full
