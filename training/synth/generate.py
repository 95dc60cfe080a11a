"""``generate``: render the synthetic catalogue + field photo set into a folder.

Every image has its own seed derived from ``(seed, part_number, kind, index)``, so the
output bytes do not depend on the number of worker processes or their scheduling.
Images are rendered into a staging folder next to ``OUT/images`` (each JPEG written to
a temp name and renamed), the staging folder replaces ``OUT/images`` only when all
images exist, and the CSVs and ``generate.json`` are written atomically last: a killed
run leaves the previous dataset (if any) intact and never a truncated JPEG.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edge_app.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from edge_app.errors import UsageError

from .compose import encode_jpeg, plan_shot, render_shot
from .wear import plan_wear
from .parts import PARTS_BY_NUMBER, Part, select_parts

log = logging.getLogger(__name__)

PARTS_COLUMNS = ("part_number", "name", "category", "manufacturer", "description", "size_mm", "look_alike_group",
                 "stock_site_a", "bin_site_a", "stock_site_b", "bin_site_b")
IMAGES_COLUMNS = ("path", "part_number", "kind", "scale_ref", "in_hand", "seed", "wear")
FORMAT = "partlens-synth/1"
MIN_SIZE, MAX_SIZE = 32, 2048
STAGING_PREFIX = ".images.staging-"
WEAR_STREAM = 0x77EA2  # second seed word of the wear generator (kept apart from the shot's own stream)
OLD_PREFIX = ".images.old-"


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    n_images: int
    parts_csv: Path
    images_csv: Path
    seconds: float


@dataclass(frozen=True)
class ImageTask:
    part_number: str
    kind: str
    index: int
    seed: int
    size: int
    worn: float = 0.0
    backgrounds: str = "field"

    @property
    def rel_path(self) -> str:
        return f"images/{self.part_number}/{self.kind}_{self.index:04d}.jpg"


def image_seed(seed: int, part_number: str, kind: str, index: int) -> int:
    """A 63-bit seed for one image, a pure function of its identity."""
    h = hashlib.blake2b(f"partlens-synth|{seed}|{part_number}|{kind}|{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def render_image(part: Part, kind: str, index: int, seed: int, size: int,
                 worn: float = 0.0, backgrounds: str = "field") -> tuple[bytes, dict[str, object]]:
    """JPEG bytes and label info of one image, from its own seed only.

    ``worn``: the chance that a field shot shows wear (``wear.WEARS``). The wear is drawn from a generator of its
    own, so a worn shot is the shot the same seed gives at ``worn=0`` (pose, light, background) plus the wear.
    """
    rng = np.random.default_rng(seed)
    plan = plan_shot(part, kind, rng, size, index=index, backgrounds=backgrounds)
    if worn > 0 and kind == "field":
        wrng = np.random.default_rng([seed, WEAR_STREAM])
        if wrng.random() < worn:
            plan = replace(plan, wear=plan_wear(part, wrng), wear_seed=int(wrng.integers(2 ** 63)))
    shot = render_shot(part, plan)
    return encode_jpeg(shot.image, plan.jpeg_quality), {"scale_ref": plan.scale_ref, "in_hand": int(plan.in_hand),
                                                        "wear": "+".join(plan.wear)}


def _run_task(args: tuple[ImageTask, str]) -> dict[str, object]:
    task, root = args
    part = PARTS_BY_NUMBER[task.part_number]
    data, info = render_image(part, task.kind, task.index, task.seed, task.size, task.worn, task.backgrounds)
    atomic_write_bytes(Path(root) / task.rel_path, data)
    return {"path": task.rel_path, "part_number": task.part_number, "kind": task.kind,
            "scale_ref": info["scale_ref"], "in_hand": info["in_hand"], "seed": task.seed, "wear": info["wear"]}


def _inventory(seed: int, part: Part) -> dict[str, object]:
    rng = np.random.default_rng(image_seed(seed, part.part_number, "inventory", 0))
    row: dict[str, object] = {}
    for site, aisle in (("a", "A"), ("b", "B")):
        stock = 0 if rng.random() < 0.15 else int(rng.integers(1, 120))
        row[f"stock_site_{site}"] = stock
        row[f"bin_site_{site}"] = f"{aisle}{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 7))}-{int(rng.integers(1, 10))}"
    return row


def _csv_text(columns: Sequence[str], rows: Iterable[dict[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def validate_options(*, seed: int, catalogue_per_part: int, field_per_part: int, size: int,
                     workers: int | None, worn: float = 0.0, backgrounds: str = "field") -> None:
    """Raise UsageError for an unsupported option (nothing is silently adjusted)."""
    from .scene import FIELD_POOLS

    if backgrounds not in FIELD_POOLS:
        raise UsageError(f"backgrounds must be one of {', '.join(FIELD_POOLS)}, got {backgrounds!r}")
    for name, v in (("seed", seed), ("catalogue_per_part", catalogue_per_part), ("field_per_part", field_per_part),
                    ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise UsageError(f"{name} must be an integer, got {v!r}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    if catalogue_per_part < 0 or field_per_part < 0:
        raise UsageError(f"image counts must be >= 0, got catalogue_per_part={catalogue_per_part} "
                         f"field_per_part={field_per_part}")
    if catalogue_per_part + field_per_part == 0:
        raise UsageError("nothing to generate: catalogue_per_part and field_per_part are both 0")
    if catalogue_per_part > 9999 or field_per_part > 9999:
        raise UsageError("at most 9999 images per part and kind")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if isinstance(worn, bool) or not isinstance(worn, (int, float)) or not 0.0 <= float(worn) <= 1.0:
        raise UsageError(f"worn must be a share between 0 and 1, got {worn!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"workers must be an integer >= 1, got {workers!r}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise UsageError(f"{out} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                         "pass --overwrite (overwrite=True) to replace a previous generate output")
    if (out / "images").exists() and not (out / "generate.json").exists():
        raise UsageError(f"{out / 'images'} exists but {out} has no generate.json, so it is not a partlens "
                         "generate output; refusing to replace it even with --overwrite")
    for name in entries:  # leftovers of a killed run (ours by name)
        if name.startswith((STAGING_PREFIX, OLD_PREFIX)) and (out / name).is_dir():
            log.info("removing %s left by an interrupted run", out / name)
            shutil.rmtree(out / name)


def generate(out_dir: str | os.PathLike[str], *, seed: int = 0, catalogue_per_part: int = 2, field_per_part: int = 8,
             size: int = 256, parts: Sequence[str] | None = None, workers: int | None = None,
             overwrite: bool = False, worn: float = 0.0, backgrounds: str = "field") -> GenerateResult:
    """Render ``catalogue_per_part`` + ``field_per_part`` images of each part into ``out_dir``.

    Writes ``parts.csv``, ``images.csv``, ``images/<part_number>/<kind>_<nnnn>.jpg`` and
    ``generate.json`` (the options). ``parts`` selects part numbers (default: all).
    ``worn`` is the share of field shots that show wear (grease, rust, dust, a chipped piece; default none);
    ``images.csv`` names it per image. ``backgrounds``: the pool field shots are taken on (``field`` for training
    photos, ``calibration`` and ``query`` for held-out photos: textures never in the ``field`` pool). ``workers`` defaults to ``os.cpu_count()``; the output bytes do not depend on it. Workers
    are spawned (not forked), so a script calling this needs the usual ``if __name__ == "__main__":``
    guard. A non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    t0 = time.perf_counter()
    validate_options(seed=seed, catalogue_per_part=catalogue_per_part, field_per_part=field_per_part, size=size,
                     workers=workers, worn=worn, backgrounds=backgrounds)
    chosen = select_parts(list(parts) if parts is not None else None)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    n_workers = workers or os.cpu_count() or 1
    tasks = [ImageTask(p.part_number, kind, i, image_seed(seed, p.part_number, kind, i), size, float(worn), backgrounds)
             for p in chosen
             for kind, n in (("catalogue", catalogue_per_part), ("field", field_per_part))
             for i in range(n)]
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    log.info("generating %d images of %d parts at %d px with %d worker(s) into %s",
             len(tasks), len(chosen), size, n_workers, out)
    try:
        rows = _render_all(tasks, staging, n_workers)
        old = out / "images"
        trash = out / f"{OLD_PREFIX}{os.getpid()}"
        if old.exists():
            old.rename(trash)
        (staging / "images").rename(old)
        staging.rmdir()
        if trash.exists():
            shutil.rmtree(trash)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parts_rows = [{**p.row(), **_inventory(seed, p)} for p in chosen]
    parts_csv = atomic_write_text(out / "parts.csv", _csv_text(PARTS_COLUMNS, parts_rows))
    images_csv = atomic_write_text(out / "images.csv", _csv_text(IMAGES_COLUMNS, rows))
    seconds = time.perf_counter() - t0
    atomic_write_json(out / "generate.json", {
        "format": FORMAT, "seed": seed, "catalogue_per_part": catalogue_per_part, "field_per_part": field_per_part,
        "size": size, "parts": [p.part_number for p in chosen], "n_images": len(rows),
        "worn": float(worn), "backgrounds": backgrounds,
    })
    log.info("generated %d images in %.1f s (%.1f ms/image wall)", len(rows), seconds,
             1000.0 * seconds / max(1, len(rows)))
    return GenerateResult(out, len(rows), parts_csv, images_csv, seconds)


def _render_all(tasks: list[ImageTask], root: Path, n_workers: int) -> list[dict[str, object]]:
    args = [(t, str(root)) for t in tasks]
    if n_workers == 1 or len(tasks) < 2:
        return [_run_task(a) for a in args]
    ctx = mp.get_context("spawn")  # no fork: callers may have threads (GUI, tqdm)
    chunk = max(1, min(16, len(tasks) // (n_workers * 8)))
    with ctx.Pool(min(n_workers, len(tasks))) as pool:
        return list(pool.imap(_run_task, args, chunksize=chunk))
