"""Session fixtures: a drawn catalogue of 30 parts, a thumbnail ONNX model, signed bundles.

Parts P0000-P0019 are in the bundle (known); P0020-P0029 are not (unknown parts). Calibration is
fitted on known P0000-P0009 + unknown P0020-P0024 and judged on the DISJOINT P0010-P0017 +
P0025-P0029. P0018/P0019 are look-alikes (same pattern, 8 vs 12 mm).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from . import synthetic as syn

N_PARTS = 30
KNOWN = [syn.part_number(i) for i in range(20)]
UNKNOWN = [syn.part_number(i) for i in range(20, 30)]
CAL_KNOWN, EVAL_KNOWN = KNOWN[:10], KNOWN[10:18]
CAL_UNKNOWN, EVAL_UNKNOWN = UNKNOWN[:5], UNKNOWN[5:]
LOOK_ALIKE = (18, 19)


@dataclass
class World:
    cat: syn.Catalogue
    model: Path
    keyring_path: Path
    keyring: object
    key: object
    bundle: Path            # calibrated bundle (v2)
    uncalibrated: Path      # v1
    field: dict
    calibration: dict


def _import(db_path: Path, cat: syn.Catalogue) -> None:
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.importer import import_catalogue

    with CatalogueDB(db_path) as db:
        with db.transaction():
            db.set_meta("site", "site_a")
        import_catalogue(db, cat.parts_csv, cat.images_csv)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from edge_app.runtime.calibration import fit
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.bundle import load_bundle

    root = tmp_path_factory.mktemp("world")
    cat = syn.write_catalogue(root / "gen", N_PARTS, look_alike=LOOK_ALIKE)
    model = syn.make_onnx_model(root / "model.onnx", N_PARTS)
    key, keyring = syn.make_keys()
    keyring.save(root / "keyring.json")
    exclude = set(UNKNOWN)
    v1 = syn.build_test_bundle(root / "bundles", model, cat, key, version=1, exclude_parts=exclude)
    # fit calibration with v1 on the calibration products only
    db_path = root / "fit" / "catalogue.db"
    _import(db_path, cat)
    ident = Identifier(load_bundle(v1, keyring), CatalogueDB(db_path), backend="onnx")
    field = syn.field_images(cat)
    top, second, correct = [], [], []
    for pn in CAL_KNOWN + CAL_UNKNOWN:
        for path in field[pn]:
            parts, scores, _ = ident.rank(ident.embed(ident.decode([path])[0]))
            top.append(scores[0])
            second.append(scores[1])
            correct.append(parts[0] == pn)
    cal = fit(top, second, correct, target_precision=0.95, info={"fitted_on": CAL_KNOWN + CAL_UNKNOWN})
    v2 = syn.build_test_bundle(root / "bundles", model, cat, key, version=2, exclude_parts=exclude,
                               calibration=cal.to_dict())
    return World(cat=cat, model=model, keyring_path=root / "keyring.json", keyring=keyring, key=key, bundle=v2,
                 uncalibrated=v1, field=field, calibration=cal.to_dict())


@pytest.fixture()
def device_db(world: World, tmp_path: Path) -> Path:
    """A fresh device catalogue DB (site_a) with the generated catalogue imported."""
    path = tmp_path / "device" / "catalogue.db"
    _import(path, world.cat)
    return path


@pytest.fixture()
def identifier(world: World, device_db: Path):
    from edge_app.runtime.identify import Identifier

    return Identifier.open(world.bundle, device_db, world.keyring_path, backend="onnx")


def clusters(n: int, dim: int, n_clusters: int, seed: int = 0, spread: float = 0.35, n_queries: int = 0,
             centre_seed: int | None = None):
    """Unit vectors around ``n_clusters`` centres; with ``n_queries`` also queries from the SAME centres."""
    centres = np.random.default_rng(seed if centre_seed is None else centre_seed).normal(size=(n_clusters, dim))
    rng = np.random.default_rng(seed + 1000)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, n_clusters, m)] + spread * rng.normal(size=(m, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    base = draw(n)
    return (base, draw(n_queries)) if n_queries else base
