"""The demo's printed table (Markdown) and its HTML report with query and match thumbnails."""
from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import atomic_write_bytes, atomic_write_text
from .metrics import Outcome

THUMB_PX = 112
QUERY_SETS = (("identify_known", "known parts, fresh field photos"),
              ("identify_known_two_views", "known parts, two of those photos of one part fused"),
              ("identify_known_worn", "known parts, the same photos worn or broken (grease, rust, dust, a chipped "
                                      "piece)"),
              ("identify_new_before_sync", "new parts BEFORE the hub added them (expected: no confident match)"),
              ("identify_new_after_sync", "new parts AFTER one sync, no retraining"),
              ("identify_known_after_sync", "known parts AFTER that sync (the new parts now compete)"))


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ms(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def markdown(r: dict[str, Any]) -> str:
    """The summary table the CLI prints and ``report.md`` holds."""
    tr, ex = r["training"], r["export"]
    lines = ["# partlens demo report", "",
             f"Model `{tr['model']}` (ImageNet init: {tr['pretrained']}), {tr['epochs']} epochs at "
             f"{tr['image_size']} px, val top-1 {_pct(tr['val_top1'])}"
             + (f", with the frozen ImageNet reference branch (weight {tr['reference_weight']:g})"
                if tr.get("reference_weight") else "")
             + f"; device model {ex['format']} "
             f"{ex['size_bytes'] / 1e6:.2f} MB; bundle `{r['bundle']['bundle_id']}`; "
             f"catalogue: {r['catalogue']['description']}.", ""]
    for ref in ex.get("refused") or []:
        lines += [f"**The parity gate refused {ref['format']}**: {ref['reason']}", ""]
    lines += ["| queries | n | top-1 | top-1 up to size look-alikes | asked to measure | top-1 after measuring | "
              "asked for a close-up | top-5 | no confident match | precision when accepted | median ms | p95 ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, name in QUERY_SETS:
        m = r.get(key)
        if not m or not m.get("queries"):
            continue
        lines.append(f"| {name} | {m['queries']} | {_pct(m['top1'])} | {_pct(m['top1_up_to_size'])} | "
                     f"{_pct(m['asked_to_measure'])} | {_pct(m['top1_after_measurement'])} | "
                     f"{_pct(m.get('asked_for_closeup'))} | {_pct(m['top5'])} | {_pct(m['no_confident_match'])} | {_pct(m['precision_when_accepted'])} | "
                     f"{_ms(m['median_ms'])} | {_ms(m['p95_ms'])} |")
    lines += ["", "top-1 is one photo, no help (the two-photo row: each part's field photos paired, the "
              "runtime fuses both views into one ranking). When size-only look-alikes lead, the app asks the engineer to "
              "measure the part; \"top-1 after measuring\" simulates a caliper reading (catalogue size "
              "+/- 0.2 mm) and applies the app's own re-ranking. Same-size look-alikes on top (a label tells "
              "them apart) make the app ask for a close-up as another view; the demo cannot simulate that photo. "
              "Query photos are taken on surfaces (a texture pool) no training photo shows. Latency (ms) is the "
              "device runtime end to end (decode, model, search) on THIS computer's CPU with the generated "
              f"{r.get('config', {}).get('generate_size', '')} px photos, not on a tablet; a 12 MP photo adds "
              "its decode (`partlens bench identify`)."]
    we = r.get("wear")
    if we and we.get("pairs"):
        kinds = ", ".join(f"{k} {_pct(v['top1'])} ({v['queries']})" for k, v in we["by_kind"].items())
        lines += ["", f"Worn or broken parts: the {we['pairs']} known-part photos again with wear drawn on the part "
                      f"(same shot otherwise): top-1 {_pct(we['worn_top1'])} vs {_pct(we['clean_top1'])} clean; "
                      f"{we['right_to_wrong']} right answers turned wrong, {we['wrong_to_right']} wrong turned right. "
                      f"By kind of wear: {kinds}."]
    conf = r.get("look_alike_confusion") or []
    if conf:
        lines += ["", "Look-alike groups (known parts): photos of one member answered with another member", "",
                  "| group | members | queries | confused | confused pairs (truth -> answer x count) |",
                  "|---|---|---|---|---|"]
        for g in conf:
            pairs = ", ".join(f"{p['truth']} -> {p['answer']} x{p['count']}" for p in g["pairs"]) or "-"
            lines.append(f"| {g['group']} | {', '.join(g['members'])} | {g['queries']} | {_pct(g['rate'])} | {pairs} |")
    warned = r.get("hub_look_alikes")
    if warned is not None:
        lines += ["", "Hub look-alike check when the new parts were added (`partlens hub look-alikes`): "
                  + ("; ".join(w["message"] for w in warned) if warned else "none of the new parts looks like "
                     "another part to the model") + "."]
    fs = r.get("field_stats")
    if fs and fs.get("identifications"):
        lines += ["", f"Field statistics (`partlens hub field-stats`) after an engineer confirmed the right part for "
                      f"each of the {fs['confirmed']} known-part photos in the app and the tablet synced "
                      f"({fs['uploaded']} uploads in {fs['sync_seconds']:.1f} s): {fs['identifications']} "
                      f"identifications, no confident match {_pct(fs['no_confident_match'])}, confirmed top-1 "
                      f"{_pct(fs['confirmed_top1'])}, top-5 {_pct(fs['confirmed_top5'])}, precision when accepted "
                      f"{_pct(fs['precision_when_accepted'])}, median {_ms(fs['median_ms'])} ms on the (simulated) tablet."]
        ev = fs.get("hub_evaluation")
        if ev:
            lines += ["", f"`partlens hub evaluate-bundle` on those {ev['photos']} confirmed photos at the hub (the "
                          f"check before a new bundle goes out): top-1 {_pct(ev['top1'])} (95% interval "
                          f"{_pct(ev['top1_ci95'][0])}-{_pct(ev['top1_ci95'][1])}), top-5 {_pct(ev['top5'])}, "
                          f"accepted {_pct(ev['accepted'])} at precision {_pct(ev['precision_when_accepted'])}; the "
                          f"tablet's own top-1 on them: {_pct(fs['confirmed_top1'])}."]
        sc = fs.get("spot_checks") or {}
        if sc.get("answered"):
            ci = sc["top1_ci95"]
            lines += ["", f"Spot checks (the hub asked for 1 identification in {round(1 / fs['spot_check_rate'])}, "
                          f"picked at random before the model answered; the engineer named the part): {sc['asked']} "
                          f"asked, {sc['answered']} answered, top-1 {_pct(sc['top1'])} (95% interval "
                          f"{_pct(ci[0])}-{_pct(ci[1])}), precision when accepted "
                          f"{_pct(sc['precision_when_accepted'])}; the same photos scored directly: "
                          f"{_pct(fs['spot_check_direct_top1'])}; all {fs['identifications']} photos: "
                          f"{_pct(fs['confirmed_top1'])}."]
    s1, s2 = r["sync_full"], r["sync_incremental"]
    tls = " (HTTPS; the tablet pins the hub's certificate)" if r["hub"]["url"].startswith("https://") else ""
    lines += ["", f"Hub on {r['hub']['url']}{tls}: full sync to v{s1['to_version']} ({s1['bytes'] / 1e6:.2f} MB, "
                  f"{s1['seconds']:.1f} s); after adding {len(r['parts']['new'])} parts, incremental sync "
                  f"v{s2['from_version']} -> v{s2['to_version']} ({s2['bytes'] / 1e3:.1f} kB, {s2['seconds']:.1f} s).",
              "", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()), ""]
    return "\n".join(lines)


def _thumb(src: Path | None, dest_dir: Path, name: str) -> str | None:
    """Write a small JPEG copy of ``src`` into ``dest_dir``; return its file name (None if unreadable)."""
    if src is None or not src.is_file():
        return None
    from PIL import Image

    from ..imageio import load_image

    dest = dest_dir / f"{name}.jpg"
    if not dest.exists():
        img = load_image(src, draft_size=(4 * THUMB_PX, 4 * THUMB_PX))
        img.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        atomic_write_bytes(dest, buf.getvalue())
    return dest.name


def _query_name(path: str) -> str:
    import hashlib

    return "q-" + hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def write_html(out: Path, report: dict[str, Any], outcomes: dict[str, Sequence[Outcome]],
               image_path: Callable[[str | None], Path | None]) -> Path:
    """``out/report.html`` (+ ``out/report_files/`` thumbnails): the summary, then every query with its
    top-3 answers. ``image_path`` maps a catalogue image id to a file (the hub's thumbnails)."""
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    body = [f"<h1>partlens demo report</h1><pre>{esc(markdown(report))}</pre>"]
    for key, title in QUERY_SETS:
        rows = outcomes.get(key) or []
        if not rows:
            continue
        body.append(f"<h2>{esc(title)}</h2><table><tr><th>photo</th><th>truth</th><th>answer</th>"
                    "<th>top-3 (catalogue image, part, similarity)</th></tr>")
        for o in rows:
            q = _thumb(Path(o.path), files, _query_name(o.path))  # one file per photo, whichever section shows it
            more = [_thumb(Path(v), files, _query_name(v)) for v in o.extra_views]
            ok = "right" if o.first == o.truth else "wrong"
            verdict = ("match" if o.status == "match" else "no confident match") + \
                      (f", confidence {o.confidence:.2f}" if o.confidence is not None else "")
            cells = []
            for j, (pn, img, sim) in enumerate(zip(o.ranked[:3], o.best_images[:3], o.similarities[:3])):
                t = _thumb(image_path(img), files, f"cat-{img}") if img else None
                pic = f'<img src="report_files/{esc(t)}" alt="{esc(pn)}">' if t else ""
                cells.append(f'<div class="m {"hit" if pn == o.truth else ""}">{pic}<br>{j + 1}. {esc(pn)} '
                             f'{sim:.3f}</div>')
            qimg = "".join(f'<img src="report_files/{esc(t)}" alt="query">' if t else esc(path)
                           for t, path in zip([q, *more], [o.path, *o.extra_views]))
            body.append(f'<tr class="{ok}"><td>{qimg}</td><td>{esc(o.truth)}</td><td>{esc(o.first or "-")}<br>'
                        f'<small>{esc(verdict)}, {o.ms:.1f} ms</small></td><td>{"".join(cells)}</td></tr>')
        body.append("</table>")
    style = ("body{font-family:sans-serif;margin:1.5em}pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
             "tr.wrong td:nth-child(3){background:#fdd}tr.right td:nth-child(3){background:#dfd}"
             ".m{display:inline-block;margin:2px;text-align:center;font-size:small}.m.hit{outline:3px solid #3a3}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>partlens demo</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    dest = out / "report.html"
    atomic_write_text(dest, page)
    return dest
