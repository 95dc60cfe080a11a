"""The demo chain, one small method per step: generate -> train -> export -> bundle -> hub -> sync
-> identify -> add parts at the hub -> sync -> identify -> report.

The hub runs as a real HTTP server on 127.0.0.1 (:class:`sync.hub.process.HubProcess`) and the
tablet syncs over HTTP. The hub is stopped when the chain ends, fails or is interrupted.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import GateError, InputError, SyncError, UsageError
from ..nativelog import native_stderr_to
from . import metrics, report
from .config import SITE, DemoConfig, export_candidates, split_parts

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
#: the demo's hub asks for a spot check on 1 identification in 4 (a hub's default is 1 in 20), so that its
#: report has enough answers to show the interval
DEMO_SPOT_CHECK_RATE = 0.25
STEPS = ("generate the synthetic catalogue and field photos", "train", "export behind the parity gate",
         "calibrate and sign the device bundle", "start the hub on 127.0.0.1, enrol a tablet, full sync",
         "identify field photos on the tablet", "add new parts at the hub, sync, identify them",
         "engineers confirm the answers in the app, sync up, field statistics at the hub", "write the report")


def export_first_passing(candidates: list[str], export: Callable[[str], dict[str, Any]]
                         ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Export the first of ``candidates`` that passes the parity gate; also return each refusal.

    The gate did its job when it refuses a model: that int8 model does not behave like the PyTorch
    one, so the next candidate is tried and the report says why (nothing is hidden). The last
    candidate's gate failure is raised.
    """
    if not candidates:
        raise UsageError("no export format to try")
    refused: list[dict[str, str]] = []
    for fmt, nxt in zip(candidates, candidates[1:]):
        try:
            return export(fmt), refused
        except GateError as exc:
            log.warning("demo: %s; trying %s", exc, nxt)
            refused.append({"format": fmt, "reason": str(exc)})
    return export(candidates[-1]), refused


def resolve_pretrained(cfg: DemoConfig) -> bool:
    """``--pretrained auto``: ImageNet init when the model's local weights are present, else random init (logged
    and recorded in the report). ``yes`` makes missing weights an error (raised by the model factory)."""
    if cfg.pretrained != "auto":
        return cfg.pretrained == "yes"
    from training import weights
    from training.models import model_info

    if model_info(cfg.model).pretrained_source is None:
        return False  # trained from scratch by design (tiny, vit)
    probe = {"mobilenet_v2": weights.mobilenet_v2_weights_path,
             "efficientnet_lite0": weights.efficientnet_lite0_package_file}.get(cfg.model)
    if probe is None:
        log.warning("demo: no local ImageNet weights for %s here; training from random init", cfg.model)
        return False
    try:
        probe()
    except InputError as exc:
        log.warning("demo: %s; training %s from random init", exc, cfg.model)
        return False
    return True


def catalogue_parts(cfg: DemoConfig) -> tuple[list[str], str]:
    """The generated parts that make up the demo terminal's inventory, and a one-line description."""
    from training.synth import PARTS

    parts = [p.part_number for p in PARTS]
    if cfg.catalogue == "all":
        n_groups = len({p.look_alike_group for p in PARTS if p.look_alike_group})
        return parts, f"all {len(parts)} generated parts ({n_groups} look-alike groups)"
    from .catalogue import mixed_catalogue

    return mixed_catalogue()


class DemoRun:
    """State shared by the steps of one demo run (paths, the report being built, timings)."""

    def __init__(self, cfg: DemoConfig, progress: Progress | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.data = self.out / "data"
        self.progress = progress or (lambda i, n, msg: None)
        self.timings: dict[str, float] = {}
        self.report: dict[str, Any] = {"config": cfg.to_dict(), "timings_s": self.timings}
        self.outcomes: dict[str, list[metrics.Outcome]] = {}

    def _step(self, i: int, detail: str = "") -> float:
        self.progress(i + 1, len(STEPS), STEPS[i] + (f" ({detail})" if detail else ""))
        return time.perf_counter()

    def _lap(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 1)
        log.info("demo: %s done in %.1f s", name, self.timings[name])

    # 0 ---------------------------------------------------------------------------------------
    def make_key(self) -> None:
        """The demo's signing key, made first, so that a key folder that cannot be written fails the run in its
        first second, with a message naming the folder, not after training (step 4). Every demo run uses the
        same one (``demo/`` beside the user's other partlens keys, outside the repository): a new key per run
        had piled up dozens of key folders."""
        from edge_app.errors import PartlensError
        from edge_app.signing import DEFAULT_KEY_DIR, SigningKey, init_key

        key_dir = DEFAULT_KEY_DIR / "demo"
        for existing in sorted(key_dir.glob("*.key")) if key_dir.is_dir() else []:
            try:
                SigningKey.load(existing)
            except (PartlensError, OSError, ValueError) as exc:
                log.warning("demo key %s is unusable (%s); making another", existing, exc)
                continue
            if existing.with_suffix(".pub.json").is_file():
                self.key_path = existing
                return
        try:
            self.key_path, _ = init_key(key_dir)
        except OSError as exc:
            raise UsageError(f"cannot make the demo's signing key in {key_dir}: "
                             f"{exc.strerror or exc}; set PARTLENS_KEY_DIR to a writable folder outside the "
                             "repository") from exc

    # 1 ---------------------------------------------------------------------------------------
    def generate(self) -> None:
        from training.synth import generate

        cfg = self.cfg
        t0 = self._step(0)
        parts, description = catalogue_parts(cfg)
        groups = split_parts(parts, cfg.new_parts, cfg.outside_parts, cfg.seed)
        self.parts = groups
        self.report["parts"] = groups
        self.report["catalogue"] = {"selection": cfg.catalogue, "description": description, "parts": len(parts)}
        kw = dict(size=cfg.generate_size, catalogue_per_part=cfg.catalogue_per_part)
        known = generate(self.data / "known", seed=cfg.seed, parts=groups["known"],
                         field_per_part=cfg.field_per_part, worn=cfg.train_worn, **kw)
        # The new parts' photos; the hub imports their catalogue shots (kind=catalogue) only.
        new = generate(self.data / "new", seed=cfg.seed, parts=groups["new"], field_per_part=3, **kw)
        # Fresh photos: another seed (poses, light), on the query pool's surfaces, whose textures no training photo
        # shows (the training photos' pool is another; an audit found queries on training textures before)
        queries = generate(self.data / "queries", seed=cfg.seed + 1000, catalogue_per_part=0, size=cfg.generate_size,
                           field_per_part=cfg.query_per_part, parts=groups["known"] + groups["new"],
                           backgrounds="query")
        # The same known-part query shots (same seed) as taken off a machine: greasy, rusty, dusty or broken
        worn = generate(self.data / "worn", seed=cfg.seed + 1000, catalogue_per_part=0, size=cfg.generate_size,
                        field_per_part=cfg.query_per_part, parts=groups["known"], worn=1.0, backgrounds="query")
        calib = generate(self.data / "calibration", seed=cfg.seed + 2000, catalogue_per_part=0,
                         size=cfg.generate_size, field_per_part=cfg.calibration_per_part,
                         parts=groups["known"] + groups["outside"], backgrounds="calibration")
        self.report["images"] = {"train": known.n_images, "new_catalogue": new.n_images,
                                 "queries": queries.n_images, "worn_queries": worn.n_images,
                                 "calibration": calib.n_images}
        self._lap("generate", t0)

    # 2 ---------------------------------------------------------------------------------------
    def train(self) -> None:
        from training.config import TrainConfig
        from training.train import train

        cfg = self.cfg
        pretrained = resolve_pretrained(cfg)
        t0 = self._step(1, f"{cfg.model}, {cfg.epochs} epochs at {cfg.image_size} px, "
                           f"{'ImageNet init' if pretrained else 'random init'}")
        tcfg = TrainConfig(data=str(self.data / "known"), out=str(self.out / "train"), model=cfg.model,
                           epochs=cfg.epochs, batch_size=cfg.batch_size, image_size=cfg.image_size,
                           pretrained=pretrained, freeze_stages=cfg.freeze_stages, seed=cfg.seed, cache=True,
                           backbone_lr_mult=cfg.backbone_lr_mult, label_smoothing=cfg.label_smoothing,
                           weight_decay=cfg.weight_decay, gallery_repeats=cfg.gallery_repeats, sampler=cfg.sampler,
                           progress=None)
        self.run = train(tcfg, *self._train_val_sets())
        self.checkpoint = self.run.best
        reference = cfg.reference_weight  # run_demo refused it without ImageNet weights
        if reference:
            from training.models import add_reference_to_checkpoint

            # the ImageNet reference branch (no training): finds parts added at the hub later better
            self.checkpoint = add_reference_to_checkpoint(self.run.best, self.run.best.with_name("best-reference.pt"),
                                                          weight=reference)
        self.report["training"] = {"model": cfg.model, "pretrained": pretrained, "epochs": cfg.epochs,
                                   "image_size": cfg.image_size, "best_epoch": self.run.best_epoch,
                                   "val_top1": self.run.best_top1, "run_dir": str(self.run.out_dir),
                                   "reference_weight": reference, "checkpoint": str(self.checkpoint)}
        self._lap("train", t0)

    def _train_val_sets(self) -> tuple[Any, Any]:
        """Train on every image of the known parts; pick the best epoch on the calibration photos of
        those parts (fresh field shots, never the query photos the report scores)."""
        from training.data import ImageSet, load_dataset

        known = load_dataset(self.data / "known", "parts").images
        index = {pn: i for i, pn in enumerate(known.labels)}
        calib = [(str(p.relative_to(self.data / "calibration")), index[pn])
                 for p, pn in metrics.field_photos(self.data / "calibration", self.parts["known"])]
        return known, ImageSet(self.data / "calibration", known.labels, calib, "calibration-known")

    # 3 ---------------------------------------------------------------------------------------
    def export(self) -> None:
        from export.pipeline import export_checkpoint

        cfg = self.cfg
        t0 = self._step(2, cfg.export_format)
        # The gate judges on the calibration photos (fresh field shots, known and outside parts), never on
        # the query photos the report scores: which model ships must not be decided on the scored photos.
        kw = dict(calib_dir=self.data / "known", val_dir=self.data / "calibration" / "images")
        # TensorFlow/LiteRT print C++ log lines when they load: kept in a file, not on the demo's console
        with native_stderr_to(self.out / "export" / "native-messages.log"):
            exported, refused = export_first_passing(
                export_candidates(cfg.export_format),
                lambda fmt: export_checkpoint(self.checkpoint, fmt, self.out / "export", **kw))
        self.exported = exported
        self.report["export"] = {"format": exported["format"], "size_bytes": exported["size_bytes"],
                                 "parity": exported["parity"], "refused": refused}
        self._lap("export", t0)

    # 4 ---------------------------------------------------------------------------------------
    def bundle(self) -> None:
        from edge_app.bundle import sha256_file
        from edge_app.preprocess import PreprocessSpec
        from edge_app.signing import SigningKey
        from export.calibrate import fit_bundle_calibration
        from export.catalogue import CatalogueImage, catalogue_from_dir
        from export.pipeline import bundle_from_exports
        from export.runners import file_runner

        t0 = self._step(3)
        key = SigningKey.load(self.key_path)
        spec = PreprocessSpec.from_dict(self.exported["preprocess"])
        runner = file_runner(self.exported["path"])
        calib = self.data / "calibration"
        positives = [CatalogueImage(p, p.name, pn) for p, pn in metrics.field_photos(calib, self.parts["known"])]
        negatives = [CatalogueImage(p, p.name, pn) for p, pn in metrics.field_photos(calib, self.parts["outside"])]
        views = self.cfg.catalogue_views
        calibration = fit_bundle_calibration(runner, spec, catalogue_from_dir(self.data / "known"), positives,
                                             negatives, catalogue_views=views,
                                             model_sha256=sha256_file(self.exported["path"]))
        self.bundle_dir = bundle_from_exports(self.out / "bundles", [self.exported["path"]],
                                              catalogue_dir=self.data / "known", key=key, version=1,
                                              calibration=calibration, catalogue_views=views,
                                              accuracy={"val_top1": self.run.best_top1, "split": "demo"})
        self.report["bundle"] = {"path": str(self.bundle_dir), "bundle_id": self.bundle_dir.name,
                                 "calibration_threshold": calibration["threshold"],
                                 "signing_key": str(self.key_path)}
        self._lap("bundle", t0)

    # 5-7 -------------------------------------------------------------------------------------
    def hub_and_tablet(self) -> None:
        """Steps 5-8 with a real hub process, stopped whatever happens."""
        from sync.hub.hub import Hub
        from sync.hub.process import HubProcess, free_port
        from sync.hub.tls import enable_tls

        # One demo key signs both the bundle and the hub's packages, so the hub trusts it for bundles too (a
        # terminal keeps the bundle key on the export workstation: `hub trust` its public key instead).
        self.hub = Hub.init(self.out / "hub", self.key_path, url=f"http://127.0.0.1:{free_port()}",
                            trust=[self.key_path.with_suffix(".pub.json")])
        self.hub.set_policy(spot_check_rate=DEMO_SPOT_CHECK_RATE)
        tls = enable_tls(self.hub, serving=False)  # HTTPS as a terminal hub should run; the tablet pins it
        self.hub.set_bundle(self.bundle_dir)
        self.hub.import_csv(self.data / "known" / "parts.csv", self.data / "known" / "images.csv")
        with HubProcess(self.out / "hub", port=int(self.hub.config["url"].rsplit(":", 1)[1])) as server:
            if server.url != self.hub.config["url"]:
                raise SyncError(f"hub process on {server.url}, but the hub URL is {self.hub.config['url']}")
            self.report["hub"] = {"url": server.url, "pid": server.proc.pid if server.proc else None,
                                  "tls_sha256": tls["sha256"]}
            self.first_sync()
            self.identify_before()
            self.add_parts_and_resync()
            self.field_feedback()

    def first_sync(self) -> None:
        from sync.client import SyncClient, enrol
        from sync.hub.enrol import add_device

        t0 = self._step(4, self.hub.config.get("url", ""))
        payload = add_device(self.hub, "tablet-01", SITE)
        self.device_dir = self.out / "tablet"
        enrol(self.device_dir, payload)
        self.client = SyncClient(self.device_dir)  # HTTP to the hub process, as on the tablet
        first = self.client.sync()
        self.report["sync_full"] = {"to_version": first.to_version, "seconds": round(first.seconds, 2),
                                    "bytes": first.downloaded_bytes}
        self._lap("hub_and_first_sync", t0)

    def identify_before(self) -> None:
        t0 = self._step(5)
        self.groups = metrics.look_alike_groups(self.data / "known" / "parts.csv", self.data / "new" / "parts.csv")
        self.sizes = metrics.part_sizes(self.data / "known" / "parts.csv", self.data / "new" / "parts.csv")
        queries = self.data / "queries"
        ident = device_identifier(self.device_dir)
        try:
            known_photos = metrics.field_photos(queries, self.parts["known"])
            self._score(ident, "identify_known", known_photos)
            # the engineer's second photo of the same part, fused with the first (multi-view query)
            self._score(ident, "identify_known_two_views", metrics.view_pairs(known_photos))
            self._score(ident, "identify_new_before_sync", metrics.field_photos(queries, self.parts["new"]))
            self._score(ident, "identify_known_worn", metrics.field_photos(self.data / "worn", self.parts["known"]))
        finally:
            ident.db.close()
        known = self.outcomes["identify_known"]
        self.report["wear"] = metrics.wear_effect(known, self.outcomes["identify_known_worn"],
                                                  metrics.wear_kinds(self.data / "worn"))
        in_catalogue = {pn: g for pn, g in self.groups.items() if pn in set(self.parts["known"])}
        self.report["look_alike_confusion"] = metrics.look_alike_confusion(known, in_catalogue)
        self._lap("identify", t0)

    def add_parts_and_resync(self) -> None:
        t0 = self._step(6, ", ".join(self.parts["new"]))
        added = self.hub.import_csv(self.data / "new" / "parts.csv", self.data / "new" / "images.csv")
        # the hub's warning: new parts the (not retrained) model sees as another part
        self.report["hub_look_alikes"] = added.get("look_alikes", [])
        second = self.client.sync()
        self.report["sync_incremental"] = {"from_version": second.from_version, "to_version": second.to_version,
                                           "seconds": round(second.seconds, 2), "bytes": second.downloaded_bytes}
        ident = device_identifier(self.device_dir)
        try:
            self._score(ident, "identify_new_after_sync", metrics.field_photos(self.data / "queries",
                                                                                self.parts["new"]))
            # the same known-part photos again: a new part that looks like a known one can take its matches
            self._score(ident, "identify_known_after_sync", metrics.field_photos(self.data / "queries",
                                                                                  self.parts["known"]))
        finally:
            ident.db.close()
        self._lap("add_parts_sync_identify", t0)

    def _score(self, ident: Any, key: str, photos: list[tuple[Path, str]]) -> None:
        from ..services import DeviceServices

        services = DeviceServices(self.device_dir, site=SITE)  # the app's own look-alike re-ranking
        try:
            self.outcomes[key] = metrics.identify_photos(ident, photos, services=services, sizes=self.sizes,
                                                         seed=self.cfg.seed)
        finally:
            services.close()
        self.report[key] = metrics.summarize(self.outcomes[key], self.groups, self.sizes)

    # 8 ---------------------------------------------------------------------------------------
    def field_feedback(self) -> None:
        """The app's own path for the known-part photos: identify (which queues a usage event), the
        engineer confirms the right part ("this is the part", with the photo), the tablet syncs up,
        and the hub's field statistics count what happened."""
        from sync.hub.fieldstats import field_stats

        from ..services import DeviceServices

        t0 = self._step(7)
        services = DeviceServices(self.device_dir, site=SITE, spot_rng=random.Random(self.cfg.seed))
        sampled: list[bool] = []  # the spot-checked identifications: was the tablet's top answer right?
        try:
            for path, truth in metrics.field_photos(self.data / "queries", self.parts["known"]):
                cap = services.captures.add_file(path)
                outcome = services.identify([cap])
                if outcome.spot_check:
                    sampled.append(outcome.model_top[:1] == [truth])
                services.send_feedback(truth, "correct", [cap], outcome)  # also answers a spot check
        finally:
            services.close()
        up = self.client.sync()
        stats = field_stats(self.hub, bundle_id=self.hub.bundle_id)
        from sync.hub.evaluate import evaluate_bundles

        # the hub scores its bundle on the photos that came up, as `hub evaluate-bundle` does before a new one
        hub_eval = evaluate_bundles(self.hub)
        self.report["field_stats"] = {"uploaded": up.uploaded, "sync_seconds": round(up.seconds, 2),
                                      **(stats["bundles"][0] if stats["bundles"] else {}),
                                      "spot_check_rate": stats["spot_check_rate"],
                                      "spot_check_direct_top1": round(sum(sampled) / len(sampled), 4) if sampled
                                      else None,
                                      "missed_parts": stats["missed_parts"][:5],
                                      "hub_evaluation": {"photos": hub_eval["photos"],
                                                         "spot_check_photos": hub_eval["spot_check_photos"],
                                                         **{k: hub_eval["bundles"][0][k] for k in (
                                                             "top1", "top1_ci95", "top5", "accepted",
                                                             "precision_when_accepted")}}}
        self._lap("field_feedback", t0)

    # 9 ---------------------------------------------------------------------------------------
    def write_report(self, t_start: float) -> None:
        t0 = self._step(8)
        if self.cfg.starter_bundle:
            from .starter import install_starter

            self.report["starter_bundle"] = str(install_starter(self.device_dir, Path(self.cfg.starter_bundle)))
        self.report["device_dir"] = str(self.device_dir)
        self.report["queries"] = {k: [o.to_dict() for o in v] for k, v in self.outcomes.items()}
        thumbs = self.out / "hub" / "thumbs"
        html_path = report.write_html(self.out, self.report, self.outcomes,
                                      lambda image_id: thumbs / f"{image_id}.jpg" if image_id else None)
        self.report["html"] = str(html_path)
        self._lap("report", t0)
        self.timings["total"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(self.out / "report.json", self.report)
        atomic_write_text(self.out / "report.md", report.markdown(self.report))


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole chain; return the report (also in OUT/report.json, report.md and report.html)."""
    cfg.validate()
    if cfg.reference_weight and not resolve_pretrained(cfg):
        raise UsageError(f"--reference-weight needs {cfg.model}'s ImageNet weights, and the demo trains it from "
                         "random init here (--pretrained); pass --reference-weight 0")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: pass another --out, or delete it to run the demo again")
    t_start = time.perf_counter()
    run = DemoRun(cfg, progress)
    run.make_key()
    try:
        run.generate()
        run.train()
        run.export()
        run.bundle()
        run.hub_and_tablet()
        run.write_report(t_start)
    except BaseException:  # an error or Ctrl-C: say what the folder holds (a re-run needs another --out)
        if out.is_dir() and any(out.iterdir()):
            log.warning("the unfinished demo run's files stay in %s (no report); the next run needs another --out "
                        "or that folder deleted", out)
        raise
    return run.report


def device_identifier(device_dir: Path) -> Any:
    """The tablet's identifier over its active bundle (as the app opens it)."""
    from ..runtime.identify import Identifier
    from ..services import DeviceServices

    services = DeviceServices(device_dir, site=SITE)
    try:
        bundle_dir, keyring = services.bundle_paths()
    finally:
        services.close()
    return Identifier.open(bundle_dir, device_dir / "catalogue.db", keyring, site=SITE)
