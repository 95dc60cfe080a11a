"""``partlens hub ...`` (desktop hub) and ``partlens sync ...`` (device client).

Nothing heavy is imported here; each handler imports the library function it calls.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from edge_app.errors import InputError, UsageError
from edge_app.runtime.importer import parse_stock
from edge_app.storage import RESERVE_BYTES

from .hub.auth import DEFAULT_VALID_DAYS, MAX_VALID_DAYS

log = logging.getLogger(__name__)


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_natural_int = _int_at_least(0)


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _hub_dir(args: argparse.Namespace) -> Path:
    d = args.hub or os.environ.get("PARTLENS_HUB")
    if not d:
        raise UsageError("pass --hub DIR (or set PARTLENS_HUB)")
    return Path(d)


def _open_hub(args: argparse.Namespace) -> Any:
    from .hub.hub import Hub

    return Hub(_hub_dir(args))


def _data_dir(args: argparse.Namespace) -> Path:
    from edge_app.paths import device_dir

    return device_dir(args.data_dir)


# -- hub handlers ---------------------------------------------------------------------------------
def _init(args: argparse.Namespace) -> int:
    from .hub.hub import Hub

    hub = Hub.init(_hub_dir(args), args.key, trust=args.trust or (), url=args.url)
    _out(hub.status())
    return 0


def _import(args: argparse.Namespace) -> int:
    _out(_open_hub(args).import_csv(args.parts_csv, args.images_csv))
    return 0


def _parse_stock(items: list[str]) -> dict[str, tuple[int | None, str | None]]:
    out: dict[str, tuple[int | None, str | None]] = {}
    for item in items or []:
        site, sep, rest = item.partition("=")
        if not sep:
            raise UsageError(f"--stock must be SITE=COUNT[:BIN], got {item!r}")
        count, colon, bin_ = rest.partition(":")
        try:  # SITE=N keeps the bin, SITE=N:BIN sets it, SITE=N: (empty) clears it
            out[site] = (parse_stock(count, f"--stock {item!r}"), bin_ if colon else None)
        except InputError as exc:
            raise UsageError(str(exc)) from None
    return out


def _add_part(args: argparse.Namespace) -> int:
    hub = _open_hub(args)
    part = {k: getattr(args, k) for k in ("part_number", "name", "category", "manufacturer", "description",
                                          "size_mm", "look_alike_group") if getattr(args, k) is not None}
    version = hub.add_part(part, inventory=_parse_stock(args.stock), images=args.image or [])
    _out({"part_number": args.part_number, "catalogue_version": version,
          "look_alikes": hub.look_alikes([args.part_number]) if args.image else []})
    return 0


def _retire_site(args: argparse.Namespace) -> int:
    _out(_open_hub(args).retire_site(args.site))
    return 0


def _look_alikes(args: argparse.Namespace) -> int:
    found = _open_hub(args).look_alikes(args.part or None)
    _out(found)
    return 1 if args.fail and any(not f["same_group"] for f in found) else 0


def _set_bundle(args: argparse.Namespace) -> int:
    _out(_open_hub(args).set_bundle(args.bundle_dir))
    return 0


def _trust(args: argparse.Namespace) -> int:
    hub = _open_hub(args)
    trusted = hub.trust(args.keyring)
    _out({"trusted": trusted, "key_roles": {k: sorted(hub.keyring.roles(k) or ("bundle", "hub")) for k in trusted}})
    return 0


def _untrust(args: argparse.Namespace) -> int:
    _out(_open_hub(args).untrust(args.key_id))
    return 0


def _status(args: argparse.Namespace) -> int:
    st = _open_hub(args).status()
    _out(st)
    changes = st.get("changes_since_backup") or []
    if changes:
        print(f"{len(changes)} change(s) since the last backup ({st.get('last_backup_at') or 'none taken yet'}) that "
              f"a restore would undo (e.g. {changes[-1]['what']}): take a backup, `partlens hub backup`",
              file=sys.stderr)
    return 0


def _field_stats(args: argparse.Namespace) -> int:
    from .hub.fieldstats import field_stats

    _out(field_stats(_open_hub(args), bundle_id=args.bundle, site=args.site, days=args.days, weekly=args.weekly))
    return 0


def _evaluate_bundle(args: argparse.Namespace) -> int:
    from .hub.evaluate import evaluate_bundles

    _out(evaluate_bundles(_open_hub(args), args.bundle, spot_checks_only=args.spot_checks_only))
    return 0


def _set_device(args: argparse.Namespace) -> int:
    from .hub.enrol import set_device

    _out(set_device(_open_hub(args), args.name, sync_window=args.sync_window, keep_free_mb=args.keep_free_mb))
    return 0


def _policy(args: argparse.Namespace) -> int:
    _out(_open_hub(args).set_policy(spot_check_rate=args.spot_check_rate))
    return 0


def _prune_usage(args: argparse.Namespace) -> int:
    from .hub.fieldstats import prune_usage

    _out(prune_usage(_open_hub(args), args.older_than_days))
    return 0


def _prune_packages(args: argparse.Namespace) -> int:
    from .hub.deltas import PackageService

    hub = _open_hub(args)
    _out({**PackageService(hub).prune(grace_hours=args.grace_hours),
          **hub.prune_orphan_files(grace_hours=args.grace_hours)})
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .hub.enrol import fleet

    rows = fleet(_open_hub(args), stale_days=args.stale_days)
    _out(rows)
    never = [r["name"] for r in rows if r["stale"] and not r.get("last_sync_at")]
    late = [r["name"] for r in rows if r["stale"] and r.get("last_sync_at")]
    if late:
        print(f"{len(late)} device(s) without a sync for more than {args.stale_days:g} days: {', '.join(late)}",
              file=sys.stderr)
    if never:
        print(f"{len(never)} device(s) enrolled but never synced: {', '.join(never)}", file=sys.stderr)
    expired = [r["name"] for r in rows if r["code"] == "expired" and not r["revoked"]]
    if expired:
        print(f"{len(expired)} enrolment code(s) expired unused (refused): {', '.join(expired)}; give a tablet a new "
              "code with `partlens hub add-device NAME --site SITE --reissue`, or `hub revoke-device NAME`",
              file=sys.stderr)
    for r in rows:
        if r.get("last_error") and not r["revoked"]:
            print(f"device {r['name']}: its last sync failed: {r['last_error']}", file=sys.stderr)
    return 0


def _delete_parts(args: argparse.Namespace) -> int:
    version = _open_hub(args).delete_parts(args.part_numbers)
    print(f"deleted {len(args.part_numbers)} part(s) at catalogue version {version}; tablets drop them (with their "
          "images and vectors) at their next sync", file=sys.stderr)
    return 0


def _revoke_device(args: argparse.Namespace) -> int:
    from .hub.enrol import revoke_device

    revoke_device(_open_hub(args), args.name)  # it logs what it did (one line)
    return 0


def _add_device(args: argparse.Namespace) -> int:
    from .hub.enrol import add_device, payload_text, qr_ascii, qr_png

    payload = add_device(_open_hub(args), args.name, args.site, args.url, sync_window=args.sync_window,
                         keep_free_mb=args.keep_free_mb, reissue=args.reissue, valid_days=args.valid_days)
    if args.qr:
        qr_png(payload, args.qr)
    if args.out:  # the token inside: readable by its owner only (a `> FILE` redirect left it 0644, an audit)
        from edge_app.atomic import PRIVATE, atomic_write_text

        atomic_write_text(args.out, payload_text(payload) + "\n", mode=PRIVATE)
    if args.ascii:
        print(qr_ascii(payload))
    print(payload_text(payload))
    print(f"device {args.name} enrolled for site {args.site}; the token is shown only now"
          + (f"; QR code written to {args.qr}" if args.qr else "") + (f"; payload written to {args.out} (0600)"
                                                                        if args.out else "")
          + f"; the code works until {payload['expires_at'][:16].replace('T', ' ')} UTC unless a tablet uses it "
          "before", file=sys.stderr)
    if str(payload.get("hub", "")).startswith("http://"):
        print("warning: this hub has no certificate, so the tablet's token (and the stock and bins it fetches) "
              "travel unencrypted; `partlens hub tls-init` moves tablets to HTTPS at their next sync",
              file=sys.stderr)
    return 0


def _tls_init(args: argparse.Namespace) -> int:
    from .hub.tls import enable_tls

    _out(enable_tls(_open_hub(args), args.host, days=args.days, force=args.force, port=args.port,
                    protect=args.protect))
    return 0


def _new_lineage(args: argparse.Namespace) -> int:
    from .hub.backup import new_lineage

    _out(new_lineage(_open_hub(args), args.above))
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .hub.backup import restore_hub

    _out(restore_hub(args.backup, _hub_dir(args), key_path=args.key, above_lineage=args.above_lineage))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from .hub.backup import backup_hub

    _out(backup_hub(_open_hub(args), args.out))
    return 0


def _tls_rotate(args: argparse.Namespace) -> int:
    from .hub.tls import activate_next, rotate_tls

    hub = _open_hub(args)
    _out(activate_next(hub, force=args.force) if args.activate
         else rotate_tls(hub, args.host, days=args.days, protect=args.protect))
    return 0


#: set by a program that starts `hub serve` for itself (the demo, tests): the pid the server must not outlive
PARENT_ENV = "PARTLENS_HUB_PARENT_PID"


def _stop_with_parent() -> None:
    """When a program started this server for itself (``PARTLENS_HUB_PARENT_PID``), stop when that program dies,
    even by SIGKILL or the OOM killer, which run no clean-up (Linux: the parent-death signal)."""
    import signal

    want = os.environ.get(PARENT_ENV)
    if not want or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError) as exc:
        log.warning("cannot arrange to stop with the program that started this hub (%s)", exc)
        return
    if str(os.getppid()) != want:  # it died before the signal was armed
        raise SystemExit(f"partlens hub: the program that started this server (pid {want}) has exited")


def _serve(args: argparse.Namespace) -> int:
    from .hub.server import serve
    from .hub.tls import has_tls

    _stop_with_parent()
    scheme = "https" if has_tls(_hub_dir(args)) and not args.plain else "http"
    print(f"partlens hub: serving {_hub_dir(args)} on {scheme}://{args.host}:{args.port} (OpenAPI at /openapi.json; "
          "Ctrl-C stops it)", file=sys.stderr, flush=True)
    serve(_hub_dir(args), args.host, args.port, log_level=args.log_level, plain=args.plain)
    return 0


def _review_list(args: argparse.Namespace) -> int:
    from .hub.fieldstats import received_since
    from .hub.review import list_uploads
    from .hub.uploads import blob_path

    hub = _open_hub(args)
    since = None if args.days is None else received_since(args.days, "--days")
    # without --kind, the automatic usage events (one per identification) are left out: they are for field-stats
    filters = dict(kind=args.kind, status=args.status, since=since, exclude_kind=None if args.kind else "usage",
                   device=args.device, after_seq=args.after)
    rows = list_uploads(hub, **filters, limit=None if args.all else args.limit)
    for r in rows:  # where to look at the photo before approving it (an admin had to find uploads/<uuid>.blob)
        r["photo"] = str(blob_path(hub, r["uuid"])) if r.get("blob_size") is not None and r.get("blob_complete") \
            else None
    if args.brief:
        for r in rows:
            p = r["payload"] if isinstance(r["payload"], dict) else {}
            what = " ".join(str(x) for x in (p.get("part_number"), p.get("verdict"), p.get("note") or None) if x)
            print(f"{r['seq']:>7}  {r['uuid']}  {r['kind']:<12} {r['status']:<8} {r['device']:<12} "
                  f"{str(r['received_at'])[:16]}  {what or '-'}  {r['photo'] or ''}".rstrip())
    else:
        _out(rows)
    if not args.all and len(rows) == args.limit:  # one page of months of uploads (an audit: 3.6 M lines, 0.9 GB)
        more = hub.store.count_uploads(**{**filters, "after_seq": rows[-1]["seq"]})
        if more:
            print(f"{len(rows)} listed, {more} more: the next page with --after {rows[-1]['seq']} (or --all)",
                  file=sys.stderr)
    return 0


def _review_approve(args: argparse.Namespace) -> int:
    from .hub.review import approve_photo, approve_photos

    uuids = list(args.uuid)
    if args.from_file:
        try:
            text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--from-file {args.from_file}: cannot be read ({exc})") from None
        uuids += [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not uuids:
        raise UsageError("name the uploads to approve: UUID ... or --from-file FILE (one UUID a line, - for stdin)")
    if len(uuids) == 1 and not args.from_file:
        _out(approve_photo(_open_hub(args), uuids[0], args.part))
        return 0
    result = approve_photos(_open_hub(args), uuids, args.part)
    _out(result)
    if result["refused"]:
        print(f"{len(result['approved'])} approved, {len(result['refused'])} refused (see 'refused')",
              file=sys.stderr)
        return 3
    return 0


def _review_confirm_unknown(args: argparse.Namespace) -> int:
    from .hub.review import confirm_unknown

    _out(confirm_unknown(_open_hub(args), args.uuid, args.note or ""))
    return 0


def _review_unapprove(args: argparse.Namespace) -> int:
    from .hub.review import unapprove

    _out(unapprove(_open_hub(args), args.uuid, args.note or ""))
    return 0


def _review_reject(args: argparse.Namespace) -> int:
    from .hub.review import reject

    reject(_open_hub(args), args.uuid, args.note or "")
    return 0


def _review_make_part(args: argparse.Namespace) -> int:
    from .hub.review import make_part

    part = {k: getattr(args, k) for k in ("part_number", "name", "category", "manufacturer", "description")}
    _out(make_part(_open_hub(args), args.uuid, part))
    return 0


def _review_export(args: argparse.Namespace) -> int:
    from .hub.review import export_training

    _out(export_training(_open_hub(args), args.out))
    return 0


def _review_export_calibration(args: argparse.Namespace) -> int:
    from .hub.review import export_calibration

    _out(export_calibration(_open_hub(args), args.out, reviewed_only=args.reviewed_only, link=args.link,
                            spot_checks_only=args.spot_checks_only))
    return 0


# -- device handlers ------------------------------------------------------------------------------
def _enrol(args: argparse.Namespace) -> int:
    from .client import enrol

    try:
        is_file = Path(args.payload).is_file()
    except OSError:  # e.g. a long payload is not a usable file name
        is_file = False
    try:
        text = Path(args.payload).read_text("utf-8") if is_file else args.payload
    except UnicodeDecodeError:
        raise UsageError(f"{args.payload}: not a text file (an enrolment payload is JSON)") from None
    paths = enrol(_data_dir(args), text)
    _out({"data_dir": str(paths.root), "enrolled": True})
    return 0


def _sync_run(args: argparse.Namespace) -> int:
    from edge_app.storage import MAX_KEEP_FREE_MB

    from .client import SyncClient

    if args.keep_free_mb is not None and not 0 <= args.keep_free_mb <= MAX_KEEP_FREE_MB:  # NaN and inf too
        raise UsageError(f"--keep-free-mb must be 0..{MAX_KEEP_FREE_MB}, got {args.keep_free_mb:g}")
    reserve = None if args.keep_free_mb is None else int(args.keep_free_mb * 1024**2)

    if args.only_if_allowed:  # exactly what the tablet's background service does (sync.background)
        import datetime as _dt

        from .background import FAILED, run_once
        from .schedule import SyncWindow

        attempt = run_once(_data_dir(args), now=_dt.datetime.now().astimezone(), charging=args.charging,
                           unmetered=args.unmetered, window=SyncWindow.parse(args.window) if args.window else None,
                           client_factory=lambda d: SyncClient(d, reserve_bytes=reserve))
        _out(attempt.to_dict())
        return 1 if attempt.outcome == FAILED else 0
    _out(SyncClient(_data_dir(args), reserve_bytes=reserve).sync(upload=not args.no_upload).to_dict())
    return 0


def _sync_status(args: argparse.Namespace) -> int:
    from .client import SyncClient

    _out(SyncClient(_data_dir(args)).status())
    return 0


def _sync_refused(args: argparse.Namespace) -> int:
    from .client import SyncClient

    rows = SyncClient(_data_dir(args)).refused_uploads(requeue=args.requeue)
    _out({"refused": rows, "requeued": sum(bool(r.get("requeued")) for r in rows)})
    return 0


def _should(args: argparse.Namespace) -> int:
    import datetime as _dt

    from .schedule import SyncWindow, should_sync

    now = _dt.datetime.fromisoformat(args.now) if args.now else _dt.datetime.now()
    ok = should_sync(now, args.charging, args.unmetered, SyncWindow.parse(args.window))
    _out({"should_sync": ok, "now": now.isoformat(timespec="minutes"), "window": args.window})
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="desktop hub: master catalogue, devices, HTTP server, review",
                         description="The desktop hub: master catalogue (SQLite), signed deltas, bundles, "
                                     "device tokens, the HTTP API and review of uploads.")
    hsub = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")
    hsub.required = True

    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = hsub.add_parser(name, help=help, description=help)
        p.add_argument("--hub", help="hub folder (default: $PARTLENS_HUB)")
        p.set_defaults(func=func)
        return p

    p = cmd("init", _init, "create a hub folder")
    p.add_argument("--key", required=True, help="private signing key file (from `partlens keys init`)")
    p.add_argument("--trust", action="append", help="keyring JSON of another trusted signer (bundles); repeatable")
    p.add_argument("--url", help="address devices use to reach this hub, e.g. http://10.0.0.5:8765")
    p = cmd("import", _import, "import parts.csv (+ images.csv) as one catalogue version")
    p.add_argument("parts_csv")
    p.add_argument("images_csv", nargs="?")
    p = cmd("add-part", _add_part, "create or update one part")
    p.add_argument("part_number")
    p.add_argument("--name", required=True)
    for f in ("category", "manufacturer", "description", "look_alike_group"):
        p.add_argument(f"--{f.replace('_', '-')}", dest=f)
    p.add_argument("--size-mm", dest="size_mm", type=float)
    p.add_argument("--stock", action="append", metavar="SITE=COUNT[:BIN]",
                   help="stock at a site; repeatable. Without :BIN the bin stays as it is; SITE=COUNT: (an empty "
                        "bin) clears it")
    p.add_argument("--image", action="append", metavar="PATH", help="a catalogue image; repeatable")
    p = cmd("retire-site", _retire_site, "remove every stock row of a site (closed, or renamed in the ERP export): "
            "its tablets show no stock from their next sync")
    p.add_argument("site")
    p = cmd("look-alikes", _look_alikes, "parts the active model cannot tell apart (photos of two parts as "
            "similar as photos of one part): add photos that show the difference, set a look_alike_group, "
            "or retrain")
    p.add_argument("--part", action="append", metavar="PN", help="only pairs involving this part; repeatable")
    p.add_argument("--fail", action="store_true",
                   help="exit 1 when a pair outside one look_alike_group is found (for scripts)")
    p = cmd("set-bundle", _set_bundle, "install a bundle, re-embed every catalogue image, make it active")
    p.add_argument("bundle_dir")
    p = cmd("trust", _trust, "trust the keys of another keyring (e.g. the bundle signer)")
    p.add_argument("keyring")
    p = cmd("untrust", _untrust, "stop trusting a bundle-signing key (leaked or retired): tablets drop it at their "
            "next sync and refuse bundles it signs")
    p.add_argument("key_id", help="the key id (`hub status` lists trusted_keys)")
    cmd("status", _status, "show the hub's catalogue version, bundle and counts")
    p = cmd("field-stats", _field_stats,
            "how each bundle does on the tablets: identifications, no-confident-match rate, latency, and from "
            "engineers' confirmations top-1/top-5, precision of accepted answers and the parts most often missed")
    p.add_argument("--bundle", help="only this bundle id")
    p.add_argument("--site", help="only this site")
    p.add_argument("--days", type=float, help="only what the hub received in the last N days (default: all)")
    p.add_argument("--weekly", action="store_true",
                   help="also each bundle's figures per ISO week (no confident match, latency, spot-check top-1): "
                        "drift shows as a trend")
    p = cmd("add-device", _add_device, "enrol a device: token + QR code (hub address, token, trusted keys)")
    p.add_argument("name")
    p.add_argument("--site", required=True)
    p.add_argument("--url", help="hub address for the device (default: the one given to `hub init`)")
    p.add_argument("--qr", metavar="PNG", help="write the QR code here (it contains the token)")
    p.add_argument("--ascii", action="store_true", help="print the QR code in the terminal")
    p.add_argument("--out", metavar="JSON", help="also write the payload to this file, readable by you only (for "
                                                 "`partlens sync enrol`; it contains the token)")
    p.add_argument("--sync-window", metavar="HH:MM-HH:MM", help="the device's nightly background-sync window, "
                   "local time, or 'always' (default on the device: 01:00-05:00)")
    p.add_argument("--keep-free-mb", type=float, metavar="MB",
                   help="storage the device's syncs leave free for photos (default on the device: 100)"),
    p.add_argument("--reissue", action="store_true",
                   help="a new token for a device that exists but never synced (its payload or QR code was lost); "
                        "the old token stops working")
    p.add_argument("--valid-days", type=float, default=DEFAULT_VALID_DAYS, metavar="DAYS",
                   help=f"the code stops working if no tablet has used it within this many days (default "
                        f"{DEFAULT_VALID_DAYS:g}, at most {MAX_VALID_DAYS:g}); once a tablet used it, it is that tablet's until revoked")
    p = cmd("devices", _devices, "list enrolled devices: site, enrolled at, revoked, and from their last contact "
            "(a sync): when, catalogue versions behind, active bundle or not, stale")
    p.add_argument("--stale-days", type=float, default=2.0,
                   help="a device whose last sync is older than this is listed as stale (default 2)")
    p = cmd("prune-packages", _prune_packages, "delete cached deltas/snapshots that end before the current "
            "catalogue version (devices are always sent packages up to the current one), and image files no "
            "catalogue image refers to (left by a failed or killed import)")
    p.add_argument("--grace-hours", type=float, default=24.0,
                   help="keep stale packages and unreferenced files this long, so in-flight downloads and "
                        "imports finish (default 24)")
    p = cmd("evaluate-bundle", _evaluate_bundle, "score the active bundle, and a candidate bundle before "
            "`set-bundle`, on the field photos engineers confirmed (top-1/top-5 with 95%% intervals, accepted share "
            "and precision, photos only one of the two gets right with McNemar's test); changes nothing")
    p.add_argument("bundle", nargs="?", help="candidate bundle folder (verified with the hub's keyring; not installed)")
    p.add_argument("--spot-checks-only", action="store_true",
                   help="only photos from spot checks (a random sample; other confirmations are chosen by engineers)")
    p = cmd("policy", _policy, "show or change what tablets follow from their next sync: the share of "
            "identifications picked at random for a spot check (the engineer names the part; field-stats turns the "
            "answers into unbiased accuracy)")
    p.add_argument("--spot-check-rate", type=float, metavar="R",
                   help="0 (off) to 1 (every identification); without it the hub uses 0.05 (about 1 in 20)")
    p = cmd("prune-usage", _prune_usage, "delete usage events (one per identification, for field-stats) received "
            "more than N days ago; spot-check answers, confirmations, photos and unknown-part reports are kept")
    p.add_argument("--older-than-days", type=float, required=True, metavar="N")
    p = cmd("set-device", _set_device, "change a tablet's nightly sync window and the storage its syncs keep free, "
            "without enrolling it again (it takes them at its next sync)")
    p.add_argument("name")
    p.add_argument("--sync-window", metavar="HH:MM-HH:MM", help="nightly background-sync window (local time) or "
                   "'always'")
    p.add_argument("--keep-free-mb", type=float, metavar="MB", help="storage a sync leaves free for photos")
    p = cmd("delete-parts", _delete_parts, "remove parts from the catalogue (with their images, stock and vectors; "
            "e.g. after an import renamed them: an import never deletes); tablets follow at their next sync")
    p.add_argument("part_numbers", nargs="+", metavar="PART_NUMBER")
    p = cmd("revoke-device", _revoke_device, "revoke a device's token at once (e.g. a lost tablet)")
    p.add_argument("name")
    p = cmd("tls-init", _tls_init, "make the hub's TLS certificate: from then on it serves HTTPS and enrolment "
            "payloads pin the certificate")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="a host name or IP address tablets use to reach the hub (repeat; the host of the hub's URL, "
                        "localhost and 127.0.0.1 are always included)")
    p.add_argument("--days", type=int, default=3650,
                   help="validity in days (renew it later with `hub tls-rotate`, without re-enrolling tablets)")
    p.add_argument("--force", action="store_true", help="replace an existing certificate (re-enrol every tablet)")
    p.add_argument("--protect", action="store_true",
                   help="encrypt the TLS key with the passphrase in $PARTLENS_KEY_PASSPHRASE (`hub serve` then needs "
                        "it; `tls-rotate` protects the next key the same way)")
    p.add_argument("--port", type=int, help="serve HTTPS on this port instead of the URL's (keep the old port for "
                   "`hub serve --plain`, so tablets enrolled over http:// can switch by themselves)")
    p = cmd("backup", _backup, "copy the hub folder consistently while it serves (database by SQLite's online "
            "backup, images, bundles, uploads, secrets 0600); the signing key is not included")
    p.add_argument("out", help="a new or empty folder outside the hub folder (ideally another disk)")
    p = cmd("restore", _restore, "make a hub folder (--hub: new or empty) from a backup; tablets keep their "
            "tokens, get a full snapshot and send again what they uploaded since the backup, at their next sync")
    p.add_argument("backup", help="a folder made by `partlens hub backup`")
    p.add_argument("--key", help="the package-signing key file, if not where hub.json says (backups do not hold it)")
    p.add_argument("--above-lineage", type=_natural_int, default=0, metavar="EPOCH",
                   help="start the restored catalogue lineage above this one (tablets name theirs when they refuse "
                        "the hub's as older)")
    p = cmd("new-lineage", _new_lineage, "start a newer catalogue lineage on this hub (after tablets refused its "
            "catalogue as older than theirs: a hub restored twice under a wrong clock); tablets get a full snapshot")
    p.add_argument("--above", type=_natural_int, required=True, metavar="EPOCH",
                   help="the lineage the tablets named (hub devices: last_catalogue_epoch)")
    p = cmd("tls-rotate", _tls_rotate, "replace the hub certificate without re-enrolling tablets: first make the "
            "next one (tablets learn its pin at their next sync), then --activate it (a running `hub serve` "
            "switches at once)")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="another host name or IP address for the next certificate (the current ones are kept)")
    p.add_argument("--days", type=int, default=3650, help="validity of the next certificate in days")
    p.add_argument("--protect", action="store_true",
                   help="encrypt the next key with $PARTLENS_KEY_PASSPHRASE (a protected current key is followed "
                        "anyway): how a plain TLS key becomes protected without re-enrolling tablets")
    p.add_argument("--activate", action="store_true",
                   help="make the waiting next certificate the hub's (refused while a tablet has not synced since "
                        "the rotation began)")
    p.add_argument("--force", action="store_true",
                   help="with --activate: even so (those tablets must then be enrolled again)")
    p = cmd("serve", _serve, "run the HTTP API, HTTPS once the hub has a certificate (OpenAPI at /openapi.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer "
                                                           "only; 0.0.0.0 for the tablets on the terminal's network)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log detail (default warning)")
    p.add_argument("--plain", action="store_true",
                   help="serve HTTP even though the hub has a certificate: run it on the old port while tablets "
                        "enrolled over http:// switch to HTTPS at their next sync (`hub devices` shows who synced)")

    review = hsub.add_parser("review", help="review uploads: list, approve, reject, confirm-unknown, "
                                               "make-part, export, export-calibration",
                             description="Review what devices uploaded.")
    rsub = review.add_subparsers(dest="review_command", metavar="REVIEW_COMMAND")
    rsub.required = True

    def rcmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = rsub.add_parser(name, help=help, description=help)
        p.add_argument("--hub", help="hub folder (default: $PARTLENS_HUB)")
        p.set_defaults(func=func)
        return p

    p = rcmd("list", _review_list, "list uploads in hub receipt order (usage events only with --kind usage; "
                                   "`hub field-stats` summarises them)")
    p.add_argument("--kind", choices=("feedback", "photo", "unknown_part", "usage"))
    p.add_argument("--status", choices=("new", "approved", "rejected", "done"))
    p.add_argument("--device", help="only what this tablet sent")
    p.add_argument("--days", type=float, help="only what the hub received in the last N days")
    p.add_argument("--limit", type=_positive_int, default=100,
                   help="list at most this many (default 100; stderr names the next page's --after)")
    p.add_argument("--after", type=int, metavar="SEQ", help="start after this upload seq (the next page)")
    p.add_argument("--all", action="store_true", help="list everything (months of usage events are millions)")
    p.add_argument("--brief", action="store_true", help="one line per upload (seq, uuid, kind, status, device, "
                                                        "received, part and verdict, photo file) instead of JSON")
    p = rcmd("approve", _review_approve, "approve uploaded photos into the catalogue (many at once: one catalogue "
             "version per 200; exit 3 when some were refused, each listed with its reason)")
    p.add_argument("uuid", nargs="*", help="upload UUIDs (`hub review list`)")
    p.add_argument("--from-file", metavar="FILE", help="more UUIDs, one a line (first word; # comments), - for stdin")
    p.add_argument("--part", help="part number (default: the one the device named; needed for a 'not this one' "
                                  "confirmation)")
    p = rcmd("reject", _review_reject, "reject an upload")
    p.add_argument("uuid")
    p.add_argument("--note")
    p = rcmd("unapprove", _review_unapprove, "undo an approved photo (e.g. approved into the wrong part): its "
             "catalogue image is removed (tablets drop it at their next sync) and the upload is new again")
    p.add_argument("uuid")
    p.add_argument("--note")
    p = rcmd("confirm-unknown", _review_confirm_unknown,
             "mark an unknown-part report as reviewed: really not in the catalogue, no part made "
             "(its photos stay calibration negatives, also with export-calibration --reviewed-only)")
    p.add_argument("uuid")
    p.add_argument("--note")
    p = rcmd("make-part", _review_make_part, "turn an unknown-part report into a part")
    p.add_argument("uuid")
    p.add_argument("--part-number", required=True)
    p.add_argument("--name")
    p.add_argument("--category")
    p.add_argument("--manufacturer")
    p.add_argument("--description")
    p = rcmd("export", _review_export, "export approved photos as root/<part_number>/*.jpg")
    p.add_argument("out")
    p = rcmd("export-calibration", _review_export_calibration,
             "export the folders `partlens calibrate` fits on: OUT/catalogue (the live catalogue), "
             "OUT/positives (photos engineers confirmed as a catalogue part, not catalogue images) and "
             "OUT/negatives (photos of open unknown-part reports)")
    p.add_argument("out", help="a new or empty folder")
    p.add_argument("--reviewed-only", action="store_true",
                   help="negatives only from unknown-part reports a reviewer confirmed (`review confirm-unknown`)")
    p.add_argument("--spot-checks-only", action="store_true",
                   help="positives only from spot-check answers (a random sample of identifications; other "
                        "confirmations are the ones engineers chose to make)")
    p.add_argument("--link", action="store_true",
                   help="hard-link the hub's images and photos instead of copying them (no extra disk on the hub's "
                        "file system; copies elsewhere); never edit linked files in place")

    s = sub.add_parser("sync", help="device: enrol with a hub, sync catalogue/bundle, upload the outbox",
                       description="Device side of sync.")
    ssub = s.add_subparsers(dest="sync_command", metavar="SYNC_COMMAND")
    ssub.required = True

    def scmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = ssub.add_parser(name, help=help, description=help)
        p.add_argument("--data-dir", help="device data folder (default: $PARTLENS_DEVICE_DIR or "
                       "~/.local/share/partlens/device)")
        p.set_defaults(func=func)
        return p

    p = scmd("enrol", _enrol, "store the hub address, token and pinned keys from a QR payload")
    p.add_argument("payload", help="the QR payload JSON, or a file holding it")
    p = scmd("run", _sync_run, "sync now: bundle, catalogue delta, uploads")
    p.add_argument("--no-upload", action="store_true", help="do not upload the outbox")
    p.add_argument("--keep-free-mb", type=float, metavar="MB",
                   help="refuse to download or apply what would leave less than this free on the device, room for "
                        f"the engineer's photos (default: the hub's setting at enrolment, else "
                        f"{RESERVE_BYTES / 1024**2:g}); exit 8 with nothing changed")
    p.add_argument("--only-if-allowed", action="store_true",
                   help="one background attempt, as the tablet's sync service makes it: sync only when docked, "
                        "unmetered and inside the window; record the outcome and the next attempt in "
                        "sync_status.json (exit 1 if the sync failed)")
    p.add_argument("--charging", action="store_true", help="(with --only-if-allowed) the device is charging")
    p.add_argument("--unmetered", action="store_true", help="(with --only-if-allowed) the network is unmetered")
    p.add_argument("--window", help="(with --only-if-allowed) window HH:MM-HH:MM or 'always' (default: the "
                   "device's, set at enrolment, else 01:00-05:00)")
    scmd("status", _sync_status, "show the device's catalogue version, bundle, index stamp and outbox counts")
    p = scmd("refused", _sync_refused, "list outbox records the hub refused (kept on the device) with the reasons")
    p.add_argument("--requeue", action="store_true",
                   help="send them again at the next sync (after the hub or the record was fixed)")
    p = ssub.add_parser("should-run", help="would the background policy sync now? (exit 0 yes, 1 no)",
                        description="Evaluate schedule.should_sync.")
    p.add_argument("--charging", action="store_true")
    p.add_argument("--unmetered", action="store_true")
    p.add_argument("--window", default="01:00-05:00")
    p.add_argument("--now", help="ISO local time (default: now)")
    p.set_defaults(func=_should)
