"""``partlens keys``, ``partlens export``, ``partlens calibrate`` and ``partlens bundle`` (build, verify, pack,
unpack)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edge_app.catalogue_views import DEFAULT_VIEWS, VIEW_SETS


def _new_passphrase() -> bytes:
    """The passphrase for protecting a key: ``PARTLENS_KEY_PASSPHRASE``, else asked twice on a terminal."""
    import getpass

    from edge_app.errors import UsageError
    from edge_app.signing import PASSPHRASE_ENV, env_passphrase

    env = env_passphrase()
    if env:
        if len(env) < 8:  # the same rule as typed at the prompt
            raise UsageError(f"{PASSPHRASE_ENV} is too short for a new passphrase (at least 8 characters)")
        return env
    if not sys.stdin.isatty():
        raise UsageError(f"set {PASSPHRASE_ENV} (no terminal to ask for a passphrase)")
    first = getpass.getpass("passphrase for the key: ")
    if len(first) < 8:
        raise UsageError("passphrase too short (at least 8 characters)")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passphrases differ")
    return first.encode()


def _keys_init(args: argparse.Namespace) -> int:
    from edge_app.signing import init_key

    path, kid = init_key(args.dir, passphrase=_new_passphrase() if args.protect else None)
    print(f"new signing key {kid}{' (passphrase-protected)' if args.protect else ''}\n  private: {path}\n"
          f"  public keyring: {path.with_name(kid + '.pub.json')}")
    return 0


def _keys_protect(args: argparse.Namespace) -> int:
    from edge_app.signing import protect_key

    kid = protect_key(args.key_file, _new_passphrase())
    print(f"key {kid} in {args.key_file} is now protected by a passphrase; commands that sign read it from "
          "PARTLENS_KEY_PASSPHRASE (copies of the plain file made before are still plain: delete them)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .parity import Thresholds
    from .pipeline import export_checkpoint

    options = {"calib_images": args.calib_images, "per_channel": args.per_channel, "opset": args.opset,
               "calib_method": args.calib_method, "seed": args.seed, "metadata": args.metadata,
               "weight_tuning": args.weight_tuning}
    from edge_app.nativelog import native_stderr_to

    # TensorFlow/LiteRT C++ log lines go to a file beside the export, not between partlens's own messages
    with native_stderr_to(Path(args.out) / "native-messages.log"):
        res = export_checkpoint(args.checkpoint, args.format, args.out, calib_dir=args.calib, val_dir=args.val,
                                catalogue_dir=args.catalogue, options=options, val_images=args.val_images,
                                thresholds=Thresholds(), overwrite=args.overwrite)
    p = res["parity"]
    print(f"{res['path']}  ({res['size_bytes'] / 1e6:.2f} MB)")
    strict = p.get("top1_agreement_strict")
    print(f"parity: top-1 agreement {p['top1_agreement']:.2%}"
          + ("" if strict is None else f" (strict {strict:.2%})") + f", median cosine {p['median_cosine']:.4f}, "
          f"nearest-{p.get('neighbour_level', 'image')} agreement {p['neighbour_agreement']:.2%} "
          f"({p['n_val']} val photos) -> passed")
    meta = res.get("metadata")
    if meta:
        print(f"TFLite metadata: {meta['status']}" + (f" ({meta['reason']})" if meta.get("reason") else ""),
              file=sys.stderr if meta["status"] == "failed" else sys.stdout)
    return 0


def _load_json_arg(value: str | None, what: str) -> dict | None:
    from edge_app.errors import UsageError

    if value is None:
        return None
    text = Path(value).read_text("utf-8") if Path(value).is_file() else value
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--{what}: neither a JSON file nor JSON text ({exc})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"--{what}: must be a JSON object")
    return obj


def _calibrate(args: argparse.Namespace) -> int:
    from edge_app.atomic import atomic_write_json
    from edge_app.errors import UsageError

    from .calibrate import calibrate_export

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    if (args.check_positives is None) != (args.check_negatives is None):
        raise UsageError("--check-positives and --check-negatives go together")
    check = (args.check_positives, args.check_negatives) if args.check_positives else None
    cal = calibrate_export(args.model, args.catalogue, args.positives, args.negatives,
                           target_precision=args.target_precision, catalogue_views=args.catalogue_views,
                           check_dirs=check)
    atomic_write_json(out, cal)
    i = cal["info"]
    print(f"{out}\nthreshold {cal['threshold']:.3f} for precision {cal['target_precision']:.2f}, fitted on "
          f"{i['positives']} photos of catalogue parts (top-1 {i['fit_top1']:.1%}) and {i['negatives']} of "
          f"other parts")
    def share(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    print(f"on these same photos (in-sample): accepted {i['fit_accepted_fraction']:.1%}, precision of accepted "
          f"{share(i['fit_precision_of_accepted'])}, other parts accepted {i['fit_negatives_accepted']:.1%}")
    c = i.get("check")
    if c:
        prec = share(c["precision_of_accepted"])
        print(f"check photos (not fitted; {c['known']} of catalogue parts, {c['unknown']} of other parts): "
              f"top-1 {c['top1_known']:.1%}, accepted {c['accepted_fraction']:.1%}, precision of accepted {prec}, "
              f"other parts accepted {c['unknown_accepted']:.1%}, AUROC known vs other "
              f"{c['auroc_known_vs_unknown']:.3f}, ECE {c['ece']:.3f} (a perfect calibration shows "
              f"{c['ece_if_perfectly_calibrated']:.3f} on this many photos)")
    return 0


def _check_archive_free(archive: str | None) -> None:
    """``--archive`` of build/reissue is checked BEFORE the bundle is written: afterwards the same command could
    not be run again (the version exists), and these commands have no --overwrite."""
    from edge_app.errors import UsageError

    if archive and Path(archive).exists():
        raise UsageError(f"{archive} exists: choose another --archive path, or delete it (nothing was built)")


def _bundle_build(args: argparse.Namespace) -> int:
    from edge_app.signing import SigningKey

    from .bundle import IndexParams, write_archive
    from .pipeline import bundle_from_exports

    _check_archive_free(args.archive)
    path = bundle_from_exports(args.out, args.model, catalogue_dir=args.catalogue, key=SigningKey.load(args.key),
                               version=args.version, kind=args.kind,
                               calibration=_load_json_arg(args.calibration, "calibration"),
                               accuracy=_load_json_arg(args.accuracy, "accuracy"),
                               index=IndexParams(M=args.M, ef_construction=args.ef_construction,
                                                 ef_search=args.ef_search), catalogue_views=args.catalogue_views)
    print(path)
    if args.archive:
        print(write_archive(path, args.archive))
    return 0


def _bundle_reissue(args: argparse.Namespace) -> int:
    from edge_app.signing import Keyring, SigningKey

    from .bundle import reissue_bundle, write_archive

    _check_archive_free(args.archive)
    path = reissue_bundle(args.bundle, args.out, keyring=Keyring.load(args.keyring), key=SigningKey.load(args.key),
                          version=args.version)
    print(path)
    if args.archive:
        print(write_archive(path, args.archive))
    return 0


def _bundle_verify(args: argparse.Namespace) -> int:
    from edge_app.bundle import load_bundle, open_archive
    from edge_app.signing import Keyring

    keyring = Keyring.load(args.keyring)
    target = Path(args.path)
    if target.is_file():
        with tempfile.TemporaryDirectory() as td:
            b = open_archive(target, td, keyring)
            m = b.manifest
    else:
        m = load_bundle(target, keyring).manifest
    print(f"OK {m['bundle_id']} (version {m['version']}, {m['kind']}, model {m['model_name']}, "
          f"{len(m['files'])} files, signed by {m['key_id']})")
    return 0


def _bundle_pack(args: argparse.Namespace) -> int:
    from .bundle import write_archive

    if args.keyring:  # the signature too (pack itself checks each file's hash, not who signed the manifest)
        from edge_app.bundle import load_bundle
        from edge_app.signing import Keyring

        load_bundle(args.bundle, Keyring.load(args.keyring))
    print(write_archive(args.bundle, args.out, overwrite=args.overwrite))
    return 0


def _bundle_unpack(args: argparse.Namespace) -> int:
    from edge_app.bundle import open_archive
    from edge_app.signing import Keyring

    print(open_archive(args.archive, args.dest, Keyring.load(args.keyring)).root)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .formats import CALIB_METHODS, FORMATS

    keys = sub.add_parser("keys", help="manage bundle signing keys", description="Manage bundle signing keys.")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    ki = ksub.add_parser("init", help="create a new Ed25519 signing key (outside any git repository)",
                         description="Create a private key file and its public keyring file.")
    ki.add_argument("--dir", help="key folder (default: $PARTLENS_KEY_DIR or ~/.config/partlens/keys)")
    ki.add_argument("--protect", action="store_true",
                    help="encrypt the private key with a passphrase ($PARTLENS_KEY_PASSPHRASE, else asked twice); "
                         "every command that signs then needs $PARTLENS_KEY_PASSPHRASE")
    ki.set_defaults(func=_keys_init)
    kp = ksub.add_parser("protect", help="encrypt an existing private key file with a passphrase (same key id)",
                         description="Encrypt a plain private key file in place with a passphrase "
                                     "($PARTLENS_KEY_PASSPHRASE, else asked twice on a terminal).")
    kp.add_argument("key_file")
    kp.set_defaults(func=_keys_protect)

    ex = sub.add_parser("export", help="export a checkpoint to ONNX/TFLite behind a parity gate",
                        description="Export a checkpoint to one format; the file is written only if it passes "
                                    "the parity gate against PyTorch on real validation photos.")
    ex.add_argument("checkpoint", help="partlens-ckpt/1 checkpoint file")
    ex.add_argument("--format", required=True, choices=sorted(FORMATS), help="export format")
    ex.add_argument("--calib", help="folder of real training images (int8 calibration, parity catalogue; "
                                    "default: the train images of the split the checkpoint was trained on)")
    ex.add_argument("--val", help="folder of real validation photos for the parity gate (default: the val images "
                                  "of the split the checkpoint was trained on)")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--catalogue", help="parity catalogue images (default: --calib)")
    ex.add_argument("--val-images", type=int, help="use only this many validation photos (default: all)")
    ex.add_argument("--calib-images", type=int, help="int8: calibration images (default 200)")
    ex.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                    help="int8: per-channel weights (default on)")
    ex.add_argument("--weight-tuning", action=argparse.BooleanOptionalAction, default=None,
                    help="tflite-int8: round int8 weights against calibration activations and correct "
                         "biases (default on; needs per-channel weights)")
    ex.add_argument("--calib-method", choices=CALIB_METHODS, help="onnx-int8: calibration method (default minmax)")
    ex.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    ex.add_argument("--seed", type=int, help="int8: calibration sample seed (default 0)")
    ex.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=None,
                    help="TFLite: embed labels/normalisation metadata (default on)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing export file")
    ex.set_defaults(func=_export)

    ca = sub.add_parser("calibrate", help="fit the \"no confident match\" calibration of an exported model",
                        description="Fit the confidence calibration (P(top part is right) from the top part "
                                    "similarity and its margin) and its acceptance threshold with the exported "
                                    "model the device runs, and write it as JSON for `partlens bundle build "
                                    "--calibration`. Use photos of other products than the ones you will judge it on.")
    ca.add_argument("model", help="exported .tflite or .onnx file (with its .json sidecar)")
    ca.add_argument("--catalogue", required=True,
                    help="the catalogue the bundle will hold (images.csv data folder or folders per part number)")
    ca.add_argument("--positives", required=True,
                    help="field photos of catalogue parts, in folders named by part number "
                         "(or a data folder's kind=field rows)")
    ca.add_argument("--negatives", required=True,
                    help="photos of parts NOT in the catalogue (in part folders, or directly in the folder)")
    ca.add_argument("--out", required=True, help="calibration JSON file to write")
    ca.add_argument("--target-precision", type=float, default=0.9,
                    help="precision of accepted answers the threshold aims at, in [0.5, 1) (default 0.9)")
    ca.add_argument("--catalogue-views", choices=sorted(VIEW_SETS), default=DEFAULT_VIEWS,
                    help=f"the bundle's catalogue view set (must match `bundle build`; default {DEFAULT_VIEWS})")
    ca.add_argument("--check-positives", help="photos of catalogue parts kept OUT of the fit (part folders): "
                                              "the result is scored on them and on --check-negatives")
    ca.add_argument("--check-negatives", help="photos of other parts kept out of the fit")
    ca.add_argument("--overwrite", action="store_true", help="replace an existing calibration file")
    ca.set_defaults(func=_calibrate)

    bundle = sub.add_parser("bundle", help="build, verify, pack and unpack signed model bundles",
                            description="Signed model bundles (see docs/ARCHITECTURE.md).")
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="ACTION")
    bsub.required = True
    bb = bsub.add_parser("build", help="build a signed bundle from exported models and a catalogue",
                         description="Build <out>/<bundle_id>/ from exported model files (with their .json "
                                     "sidecars); catalogue embeddings are computed with the exported model.")
    bb.add_argument("--model", action="append", required=True, help="exported model file (repeat for desktop)")
    bb.add_argument("--catalogue", required=True, help="catalogue images (images.csv data folder or ImageFolder)")
    bb.add_argument("--key", required=True, help="private key file from `partlens keys init`")
    bb.add_argument("--version", type=int, required=True, help="bundle version (integer, must increase)")
    bb.add_argument("--kind", choices=("device", "desktop"), default="device", help="bundle kind (default device)")
    bb.add_argument("--out", required=True, help="bundles root folder")
    bb.add_argument("--calibration", help="confidence calibration from `partlens calibrate` (JSON file or text); "
                                          "refused if fitted with another model or view set")
    bb.add_argument("--accuracy", help="accuracy section: JSON file or text")
    bb.add_argument("--M", type=int, default=16, help="hnswlib M (default 16)")
    bb.add_argument("--ef-construction", type=int, default=200, help="hnswlib ef_construction (default 200)")
    bb.add_argument("--ef-search", type=int, default=64, help="hnswlib ef at query time (default 64)")
    bb.add_argument("--catalogue-views", choices=sorted(VIEW_SETS), default=DEFAULT_VIEWS,
                    help="each catalogue vector is the mean of these fixed views of the image; the hub embeds "
                         f"added parts the same way (default {DEFAULT_VIEWS}; none = the image alone)")
    bb.add_argument("--archive", help="also write a .tar of the bundle here")
    bb.set_defaults(func=_bundle_build)

    br = bsub.add_parser("reissue", help="the same model and catalogue as a newer version (how a model is rolled "
                         "back: tablets take only newer versions)",
                         description="Verify BUNDLE, then write it again under --version (above its own) with a new "
                                     "id and signature: same model files, preprocessing, labels, catalogue vectors, "
                                     "calibration and index parameters.")
    br.add_argument("bundle", help="bundle folder to bring back (e.g. copied from the hub's bundles/)")
    br.add_argument("--version", type=int, required=True, help="new version, above every version tablets ran")
    br.add_argument("--keyring", required=True, help="trusted public keys (JSON) the bundle must verify with")
    br.add_argument("--key", required=True, help="private key file from `partlens keys init`")
    br.add_argument("--out", required=True, help="bundles root folder")
    br.add_argument("--archive", help="also write a .tar of the bundle here")
    br.set_defaults(func=_bundle_reissue)

    bv = bsub.add_parser("verify", help="verify a bundle folder or .tar (exit 4 on failure)",
                         description="Check the signature, the schema and every file hash.")
    bv.add_argument("path", help="bundle folder or .tar archive")
    bv.add_argument("--keyring", required=True, help="trusted public keys (JSON)")
    bv.set_defaults(func=_bundle_verify)

    bp = bsub.add_parser("pack", help="pack a bundle folder into a .tar", description="Pack a bundle into a .tar.")
    bp.add_argument("bundle", help="bundle folder")
    bp.add_argument("out", help="output .tar")
    bp.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    bp.add_argument("--keyring", help="verify the manifest's signature with these trusted keys before packing "
                                      "(without it only each file's hash is checked)")
    bp.set_defaults(func=_bundle_pack)

    bu = bsub.add_parser("unpack", help="verify and unpack a bundle .tar",
                         description="Unpack into DEST/<bundle_id>/ after checking every member and the signature.")
    bu.add_argument("archive", help="bundle .tar")
    bu.add_argument("dest", help="bundles root folder")
    bu.add_argument("--keyring", required=True, help="trusted public keys (JSON)")
    bu.set_defaults(func=_bundle_unpack)
