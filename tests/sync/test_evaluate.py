"""``partlens hub evaluate-bundle``: the active and a candidate bundle scored on the hub's labelled field photos."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edge_app.errors import InputError, IntegrityError, UsageError

from .helpers import embedder_factory, make_bundle, part_image, upload_items


def _confirm(part: str, photo: bytes, capture: str, *, spot: bool = False, verdict: str = "correct") -> tuple:
    payload = {"part_number": part, "verdict": verdict, "capture_ids": [capture], "candidates": [],
               "bundle_id": "x", "site": "site_a"}
    if spot:
        payload["spot_check"] = True
    return ("feedback", payload, photo)


def _reference_top1(embedder, photos: list[tuple[bytes, str]]) -> list[bool]:
    """Rank the hub's three catalogue parts for each photo by brute force (max image similarity per part)."""
    cat = embedder([Image.open(io.BytesIO(part_image(i))) for i in range(3)])
    q = embedder([Image.open(io.BytesIO(b)) for b, _ in photos])
    best = np.argmax(q @ cat.T, axis=1)
    return [f"P{int(j)}" == truth for j, (_, truth) in zip(best, photos)]


def test_evaluate_active_and_candidate_on_field_photos(world, capsys, monkeypatch) -> None:
    from edge_app.cli import main
    from sync.hub.evaluate import evaluate_bundles, mcnemar_p

    with pytest.raises(InputError, match="no labelled field photos"):
        evaluate_bundles(world.hub)
    cand_dir = make_bundle(world.root / "export", world.export_key, 2)
    models = (world.hub.embedder(), embedder_factory(cand_dir, world.hub.keyring))
    # a photo half one part, half another, where the two models disagree: labelled as the active one answers
    a0, a1 = (np.asarray(Image.open(io.BytesIO(part_image(i))), np.float32) for i in (0, 1))
    for w in np.linspace(0.3, 0.7, 81):
        buf = io.BytesIO()
        Image.fromarray((a0 * w + a1 * (1 - w)).astype(np.uint8)).save(buf, "JPEG")
        answers = [_reference_top1(m, [(buf.getvalue(), "P0")])[0] for m in models]
        if answers[0] != answers[1]:
            break
    else:
        pytest.fail("no blend where the two test models disagree")
    split = (buf.getvalue(), "P0" if answers[0] else "P1")
    scored = [(part_image(0, noise=20), "P0"), (part_image(1, noise=40), "P1"), (part_image(2, noise=60), "P2"),
              (part_image(0, noise=10), "P1"),  # mislabelled by the engineer: every model is "wrong" on it
              split, (part_image(2, noise=5), "P2")]
    upload_items(world, [
        *[_confirm(pn, photo, f"c{i}", spot=i < 3) for i, (photo, pn) in enumerate(scored)],
        _confirm("P0", part_image(0, noise=20), "c0"),                    # the same photo confirmed again
        _confirm("P2", part_image(2), "c9", verdict="wrong"),             # "not this one": nothing to score
        _confirm("GONE-1", part_image(5), "c10"),                         # a part no longer in the catalogue
        _confirm("P1", b"not a photo at all", "c11"),                     # does not decode: left out, counted
    ])
    version, active = world.hub.store.version(), world.hub.bundle_id
    r = evaluate_bundles(world.hub)
    (only,) = r["bundles"]
    expected = _reference_top1(world.hub.embedder(), scored)
    assert r["photos"] == 6 and r["spot_check_photos"] == 3 and only["bundle_id"] == active and only["active"]
    assert only["top1"] == round(sum(expected) / 6, 4) and only["top1_ci95"][0] < only["top1"] < only["top1_ci95"][1]
    assert not expected[3] and only["top5"] == 1.0  # three parts: every answer is in the top five
    assert r["left_out"] == {"not_a_random_sample": 0, "still_uploading": 0, "part_not_in_catalogue": 1,
                             "in_catalogue_or_duplicate": 1, "unreadable": 1}

    r2 = evaluate_bundles(world.hub, cand_dir)
    a, c = r2["bundles"]
    assert a == only and not c["active"] and c["bundle_id"] != active
    cand_expected = _reference_top1(embedder_factory(cand_dir, world.hub.keyring), scored)
    assert c["top1"] == round(sum(cand_expected) / 6, 4)
    pair = r2["paired"]
    assert pair["only_active_right"] == sum(x and not y for x, y in zip(expected, cand_expected))
    assert pair["only_candidate_right"] == sum(y and not x for x, y in zip(expected, cand_expected))
    assert sum(v for k, v in pair.items() if k != "mcnemar_p") == 6 and pair["only_active_right"] == 1
    assert pair["mcnemar_p"] == mcnemar_p(pair["only_active_right"], pair["only_candidate_right"])
    # nothing on the hub changed: same bundle, same catalogue version, the candidate not installed
    assert world.hub.bundle_id == active and world.hub.store.version() == version
    assert not world.hub.bundle_dir(c["bundle_id"]).exists()

    spot = evaluate_bundles(world.hub, spot_checks_only=True)
    assert spot["photos"] == 3 and spot["left_out"]["not_a_random_sample"] == 6  # checked first
    assert spot["bundles"][0]["top1"] == round(sum(expected[:3]) / 3, 4)

    # the CLI prints the same JSON (its hub runs the test embedder); a tampered candidate is refused before scoring
    monkeypatch.setattr("sync.hub.hub.bundle_embedder", embedder_factory)
    assert main(["hub", "evaluate-bundle", "--hub", str(world.hub.root), str(cand_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["paired"] == pair
    bad = world.root / "tampered"
    shutil.copytree(cand_dir, bad)
    (bad / "model.tflite").write_bytes(b"another model")
    with pytest.raises(IntegrityError):
        evaluate_bundles(world.hub, bad)
    with pytest.raises(UsageError, match="is the active bundle"):
        evaluate_bundles(world.hub, world.hub.bundle_dir(active))


def test_mcnemar_exact_p_values() -> None:
    from sync.hub.evaluate import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(5, 0) == 0.0625 and mcnemar_p(0, 5) == 0.0625  # 2 * (1/2)^5
    assert mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-2)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_p(0, 25) == pytest.approx(2 / 2**25, rel=1e-2)  # was rounded to 0.0 (6 decimal places)


def test_calibration_edges_found_by_the_statistics_audit() -> None:
    """A confidence of exactly 1.0 was accepted by the "accept nothing" threshold 1.0; a query with no second part
    counted as very confident when fitting (never at run time); ECE of no queries was 0.0."""
    import numpy as np

    from edge_app.errors import InputError
    from edge_app.runtime import calibration as C

    assert C.choose_threshold(np.array([1.0, 1.0, 1.0, 0.2]), np.array([1, 0, 0, 0], bool), 0.9) == 1.0
    assert C._sigmoid(np.array([100.0]))[0] < 1.0  # so nothing reaches that cut
    top = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95]
    second = [0.5, 0.6, 0.65, 0.55, 0.45, 0.38, float("nan")]
    cal = C.fit(top, second, [True, True, False, True, False, False, False], target_precision=0.6)
    assert cal.n_fit == 6 and cal.confidence(0.95, float("nan"))[0] == 0.0
    with pytest.raises(InputError):
        C.ece([], [])


def test_evaluate_reports_unknown_part_rejection_with_a_calibrated_bundle(world) -> None:
    """Unknown-part report photos are parts the catalogue lacks: the share a bundle's calibration accepts, and the
    AUROC of its confidence (known vs unknown), match a brute-force computation."""
    from edge_app.runtime.calibration import Calibration, auroc
    from sync.hub.evaluate import evaluate_bundles

    cal = Calibration(coef=(20.0, 10.0), intercept=-18.0, threshold=0.5)
    cand_dir = make_bundle(world.root / "export", world.export_key, 2, calibration=cal.to_dict())
    known = [(part_image(i % 3, noise=15 + 10 * i), f"P{i % 3}") for i in range(6)]
    unknown = [part_image(40), part_image(41), part_image(0, noise=60)]  # the last: a listed part reported anyway
    upload_items(world, [*[_confirm(pn, ph, f"k{i}") for i, (ph, pn) in enumerate(known)],
                         *[("unknown_part", {"note": "?", "capture_ids": [f"u{i}"], "site": "site_a"}, ph)
                           for i, ph in enumerate(unknown)]])
    r = evaluate_bundles(world.hub, cand_dir)
    assert (r["photos"], r["unknown_part_photos"]) == (6, 3)
    active, cand = r["bundles"]
    assert "unknown_accepted" not in active  # the active test bundle has no calibration
    emb = embedder_factory(cand_dir, world.hub.keyring)
    catv = emb([Image.open(io.BytesIO(part_image(i))) for i in range(3)])
    q = emb([Image.open(io.BytesIO(b)) for b in [*(ph for ph, _ in known), *unknown]])
    sims = np.sort(q @ catv.T, axis=1)[:, ::-1]
    conf = cal.confidence(sims[:, 0], sims[:, 1])
    is_known = np.array([True] * 6 + [False] * 3)
    assert cand["unknown_accepted"] == round(float((conf[~is_known] >= 0.5).mean()), 4)
    assert cand["accepted"] == round(float((conf[is_known] >= 0.5).mean()), 4)
    assert cand["auroc_known_vs_unknown"] == round(float(auroc(conf, is_known)), 4)
    assert r["paired"]["both_right"] + r["paired"]["both_wrong"] + r["paired"]["only_active_right"] + \
        r["paired"]["only_candidate_right"] == 6  # the pairing counts catalogue-part photos only


def test_evaluate_with_no_decodable_photo_is_a_clear_error(world) -> None:
    from sync.hub.evaluate import evaluate_bundles

    upload_items(world, [_confirm("P1", b"\xff\xd8 cut short", "c1"),
                         ("unknown_part", {"note": "?", "capture_ids": ["u1"], "site": "site_a"}, part_image(40))])
    with pytest.raises(InputError, match="none of the labelled field photos on the hub decodes"):
        evaluate_bundles(world.hub)


def test_set_bundle_after_evaluate_bundle_embeds_the_catalogue_once(world, monkeypatch, caplog) -> None:
    """evaluate-bundle embeds the live catalogue with the candidate; set-bundle reuses those vectors (keyed by the
    content-named image and its kind) instead of embedding every image again, and stores the same vectors."""
    import logging

    import numpy as np

    from sync.hub.evaluate import evaluate_bundles
    from sync.hub.hub import Hub

    upload_items(world, [("feedback", {"part_number": "P1", "verdict": "correct", "capture_ids": ["c1"]},
                          part_image(1, noise=20))])
    cand = make_bundle(world.root / "export", world.export_key, 2)
    evaluate_bundles(world.hub, cand)
    assert list((world.hub.root / "cache").glob("embeddings-*.npz"))
    calls = []
    real = Hub.embed_rows

    def counting(self, rows, embedder):
        calls.append(len(rows))
        return real(self, rows, embedder)

    monkeypatch.setattr(Hub, "embed_rows", counting)
    world.hub.set_bundle(cand)
    assert calls == []  # nothing embedded a second time
    emb = embedder_factory(cand, world.hub.keyring)
    rows = world.hub.store.live_images()
    fresh = real(world.hub, rows, emb)
    stored = world.hub.store.part_embeddings(cand.name)
    got = np.concatenate([stored[pn] for pn in sorted(stored)])
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["part_number"], rows[i]["image_id"]))
    assert np.allclose(got, fresh[order], atol=1e-3)  # float16 in the catalogue
    assert not list((world.hub.root / "cache").glob("*.npz"))  # emptied once the bundle is active
    # a cut cache file is ignored (embedded again), never an error
    cand3 = make_bundle(world.root / "export", world.export_key, 3)
    (world.hub.root / "cache").mkdir(exist_ok=True)
    from edge_app.bundle import load_bundle

    bid3 = load_bundle(cand3, world.hub.keyring).bundle_id
    (world.hub.root / "cache" / f"embeddings-{bid3}.npz").write_bytes(b"PK\x03\x04 cut")
    with caplog.at_level(logging.WARNING, logger="sync.hub.hub"):
        world.hub.set_bundle(cand3)
    assert "unusable" in caplog.text and calls == [len(rows)]
