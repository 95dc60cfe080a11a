"""HTTPS for the hub on the terminal network: a self-signed certificate that tablets pin at enrolment.

Without it, device tokens and field photos cross the terminal Wi-Fi in clear text (packages and
bundles are signed either way, so TLS adds confidentiality and token protection, not integrity).
``partlens hub tls-init`` makes an EC P-256 key and a self-signed certificate (10 years; its subject
alternative names are the hub's host names and IP addresses) in ``<hub>/tls/``. From then on
``hub serve`` speaks HTTPS, and every enrolment payload carries the certificate's sha256: the tablet
trusts THAT certificate only (no public CA, no "accept any certificate"; checked right after the TLS
handshake, before the request is sent), so a machine in the middle with another certificate gets a
verification error, not the token. The pin does not depend on the hub's address. Renewing the certificate means
re-enrolling the tablets unless it goes through ``tls-rotate`` (below), hence the long validity.
A running ``hub serve`` picks up an activated certificate at the next handshake (:class:`ReloadingTLS`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from edge_app.atomic import PRIVATE, atomic_write_bytes, atomic_write_json
from edge_app.errors import InputError, UsageError

from ..transport import upgrade_offer_bytes

log = logging.getLogger(__name__)

CERT = "cert.pem"
KEY = "key.pem"
VALID_DAYS = 3650


def tls_dir(hub_root: str | os.PathLike[str]) -> Path:
    return Path(hub_root) / "tls"


def has_tls(hub_root: str | os.PathLike[str]) -> bool:
    """Whether the hub has a certificate and key (then it serves HTTPS only)."""
    d = tls_dir(hub_root)
    return (d / CERT).is_file() and (d / KEY).is_file()


def cert_pem(hub_root: str | os.PathLike[str]) -> str:
    """The hub's certificate (PEM), as enrolment payloads carry it."""
    try:
        return (tls_dir(hub_root) / CERT).read_text()
    except OSError as exc:
        raise InputError(f"hub has no TLS certificate ({exc}); run `partlens hub tls-init`") from None


def fingerprint(pem: str) -> str:
    """sha256 of the certificate's DER bytes, hex: the pin tablets get at enrolment."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def tls_status(hub_root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The hub certificate's pin, names and expiry (what ``hub status`` shows), or None without one."""
    if not has_tls(hub_root):
        return None
    from cryptography import x509

    pem = cert_pem(hub_root)
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # tablets check the pin, not the dates: expiry only matters to browsers and curl
    days_left = (cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc)).days
    return {"sha256": fingerprint(pem), "hosts": [str(v.value) for v in san],
            "not_after": cert.not_valid_after_utc.isoformat(), "days_left": days_left}


def _names(hosts: Iterable[str]) -> list[Any]:
    from cryptography import x509

    out: list[Any] = []
    for h in dict.fromkeys(h.strip() for h in hosts if h and h.strip()):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if any(c in h for c in "/: ") or h.startswith("."):
                raise UsageError(f"not a host name or IP address: {h!r}") from None
            out.append(x509.DNSName(h))
    return out


def key_is_protected(key_file: str | os.PathLike[str]) -> bool:
    """Whether a PEM key file is encrypted (``hub tls-init --protect``)."""
    return b"ENCRYPTED" in Path(key_file).read_bytes()[:64]


def key_password(key_file: str | os.PathLike[str]) -> str | None:
    """The password ``hub serve`` needs for the key file: None for a plain key; for a protected one the
    passphrase from ``PARTLENS_KEY_PASSPHRASE``, checked here (:class:`UsageError` when missing or wrong, so the
    server refuses to start instead of failing every handshake)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from edge_app.signing import PASSPHRASE_ENV, env_passphrase

    if not key_is_protected(key_file):
        return None
    pw = env_passphrase()
    if not pw:
        raise UsageError(f"the hub's TLS key {key_file} is protected by a passphrase: set {PASSPHRASE_ENV}")
    try:
        load_pem_private_key(Path(key_file).read_bytes(), password=pw)
    except (ValueError, TypeError):
        raise UsageError(f"{key_file}: wrong passphrase (from {PASSPHRASE_ENV})") from None
    return pw.decode()


def init_tls(hub_root: str | os.PathLike[str], hosts: Iterable[str], *, days: int = VALID_DAYS,
             force: bool = False, protect: bool = False, _into: Path | None = None) -> dict[str, Any]:
    """Create the hub's key and self-signed certificate for ``hosts`` (names and IPs devices use).

    Refuses to replace an existing certificate unless ``force`` (every enrolled tablet pins the old
    one and must then be re-enrolled; :func:`rotate_tls` replaces it without that). The key file is
    mode 0600; with ``protect`` it is encrypted with the passphrase in ``PARTLENS_KEY_PASSPHRASE``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = _into or tls_dir(hub_root)
    if _into is None and has_tls(hub_root) and not force:
        raise UsageError(f"{d} already holds a certificate; enrolled tablets pin it. Pass --force to replace it "
                         "(then re-enrol every tablet)")
    if not 1 <= days <= 36_500:  # a million days overflowed the certificate's date
        raise UsageError(f"validity must be 1..36500 days, got {days}")
    from edge_app.signing import PASSPHRASE_ENV, env_passphrase

    passphrase = env_passphrase() if protect else None
    if protect and not passphrase:
        raise UsageError(f"--protect encrypts the TLS key with the passphrase in {PASSPHRASE_ENV}: set it")
    sans = _names([*hosts, "localhost", "127.0.0.1"])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partlens hub"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "partlens")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            # its own trust anchor: tablets load it as the only CA they accept for this hub
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase) if passphrase
                                else serialization.NoEncryption())
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / KEY, key_pem, mode=PRIVATE)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write_bytes(d / CERT, pem)
    info = {"cert": str(d / CERT), "key": str(d / KEY), "hosts": [str(s.value) for s in sans],
            "not_after": cert.not_valid_after_utc.isoformat(), "sha256": fingerprint(pem.decode())}
    log.info("hub TLS certificate for %s written to %s (sha256 %s)", info["hosts"], d, info["sha256"])
    return info


def next_dir(hub_root: str | os.PathLike[str]) -> Path:
    return tls_dir(hub_root) / "next"


def pins(hub_root: str | os.PathLike[str]) -> list[str]:
    """The certificate pins devices should accept: the current one, and the next one while a rotation runs."""
    out = [fingerprint(cert_pem(hub_root))] if has_tls(hub_root) else []
    nxt = next_dir(hub_root) / CERT
    if out and nxt.is_file() and (next_dir(hub_root) / KEY).is_file():
        out.append(fingerprint(nxt.read_text()))
    return out


def rotate_tls(hub: Any, hosts: Iterable[str] = (), *, days: int = VALID_DAYS, protect: bool = False) -> dict[str, Any]:
    """Step 1 of replacing the hub certificate without re-enrolling tablets: make the NEXT key and certificate
    (``tls/next/``; same host names plus ``hosts``). Every sync plan lists both pins from now on (over the
    TLS connection the tablet already trusts), so tablets learn the next pin at their next sync. Step 2 is
    :func:`activate_next`."""
    from cryptography import x509

    if not has_tls(hub.root):
        raise UsageError("the hub has no certificate to rotate: run `partlens hub tls-init` first")
    if (next_dir(hub.root) / CERT).is_file():
        raise UsageError(f"a next certificate is already waiting in {next_dir(hub.root)}: "
                         "`partlens hub tls-rotate --activate` it first")
    cert = x509.load_pem_x509_certificate(cert_pem(hub.root).encode())
    old = [str(v.value) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    # the start time first (a crash before the certificate leaves a rotation that simply starts again);
    # microseconds: a tablet that synced a moment before must not count as having seen the next pin
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
    atomic_write_json(next_dir(hub.root) / "rotation.json", {"started_at": started})
    # the next key is protected if asked, or like the current one (with the passphrase in the environment now)
    info = init_tls(hub.root, [*old, *hosts], days=days, _into=next_dir(hub.root),
                    protect=protect or key_is_protected(tls_dir(hub.root) / KEY))
    info["started_at"] = started
    _count_pin_change(hub)
    # the first settings stamp that lists the next pin: a tablet that reports holding it (or a later one) knows the
    # pin, whatever the clocks say (last sync times against the start time let a tablet that synced under a hub
    # clock set 3 h ahead count as having learnt it, and activation locked it out: an audit, 23rd session)
    atomic_write_json(next_dir(hub.root) / "rotation.json",
                      {"started_at": started, "settings_stamp": [hub.store.epoch(),
                                                                  int(hub.store.get_meta("settings_serial", 0))]})
    log.warning("next hub certificate %s made; tablets learn it at their next sync, then run "
                "`partlens hub tls-rotate --activate` (a running `hub serve` switches at once)", info["sha256"])
    return info


def _count_pin_change(hub: Any) -> None:
    """The pins travel in the signed settings tablets follow: a new pin list is a new count of them, so a tablet
    refuses an earlier document (with the old certificate's pin) replayed after the rotation."""
    hub.store.set_setting("tls_pins", pins(hub.root))


def activate_next(hub: Any, *, force: bool = False) -> dict[str, Any]:
    """Step 2: the next certificate becomes the hub's (a running ``hub serve`` uses it from the next
    handshake). Refused while an enrolled, not revoked tablet has not synced since the rotation began (it does
    not know the new pin and would have to be enrolled again), unless ``force``. Re-runnable after a crash
    half-way."""
    from .enrol import fleet

    nd = next_dir(hub.root)
    if not ((nd / CERT).is_file() and (nd / KEY).is_file()):
        raise UsageError("no next certificate waiting: run `partlens hub tls-rotate` first")
    try:
        rotation = json.loads((nd / "rotation.json").read_text())
        started = _dt.datetime.fromisoformat(rotation["started_at"])
        needed = rotation.get("settings_stamp")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{nd / 'rotation.json'} is missing or unreadable ({exc}); cannot tell which tablets "
                         "know the next certificate") from None
    behind = sorted(d["name"] for d in fleet(hub) if not d["revoked"] and not _knows_next_pin(d, started, needed))
    if behind and not force:
        raise UsageError(f"{len(behind)} tablet(s) have not synced since the rotation began and do not know the new "
                         f"certificate: {', '.join(behind)}. Let them sync, or pass --force (they must then be "
                         "enrolled again)")
    d = tls_dir(hub.root)
    old = fingerprint(cert_pem(hub.root))
    atomic_write_bytes(d / KEY, (nd / KEY).read_bytes(), mode=PRIVATE)  # key first: a re-run repairs a crash here
    atomic_write_bytes(d / CERT, (nd / CERT).read_bytes())
    for f in (CERT, KEY, "rotation.json"):
        (nd / f).unlink(missing_ok=True)
    nd.rmdir()
    _count_pin_change(hub)
    new = fingerprint(cert_pem(hub.root))
    log.warning("hub certificate is now %s (was %s); a running `hub serve` presents it from the next connection",
                new, old)
    hub.needs_backup(f"certificate {new[:12]} activated; tablets no longer trust the one before")
    return {"sha256": new, "previous_sha256": old, "not_synced_since_rotation": behind}


def _knows_next_pin(device: Mapping[str, Any], started: _dt.datetime, needed: Any) -> bool:
    """Whether ``device`` follows signed settings listing the next pin: by the settings stamp it reported (from
    ``needed`` on), else (a tablet or rotation from before stamps were reported) by a sync after ``started``."""
    reported = device.get("last_settings_stamp")
    if reported and isinstance(needed, list):
        try:
            return [int(x) for x in json.loads(reported)] >= [int(x) for x in needed]
        except (ValueError, TypeError):
            pass
    return device["last_sync_at"] is not None and _dt.datetime.fromisoformat(device["last_sync_at"]) >= started


def enrolment_fields(hub_root: str | os.PathLike[str], url: str) -> dict[str, str]:
    """What an enrolment payload carries about TLS for devices reaching the hub at ``url``.

    A hub with a certificate serves HTTPS only: the URL must be https:// and the payload pins the
    certificate by its sha256 (``tls_sha256``: 64 characters, so the QR code stays small). An https://
    URL to a hub without one (e.g. behind a reverse proxy with a certificate from a CA the tablets trust)
    pins nothing: the tablet uses its system's CAs.
    """
    scheme = urlsplit(url).scheme
    if has_tls(hub_root):
        if scheme != "https":
            raise UsageError(f"the hub serves HTTPS (it has a TLS certificate); give devices an https:// URL, "
                             f"not {url!r}")
        return {"tls_sha256": fingerprint(cert_pem(hub_root))}
    if scheme == "https":
        log.info("hub URL %s is https but the hub has no certificate of its own: devices will trust their "
                 "system's CAs (a reverse proxy); `partlens hub tls-init` makes one to pin", url)
    return {}


def _unfinished_init(hub: Any, names: Sequence[str]) -> dict[str, Any] | None:
    """The certificate an earlier ``tls-init`` made before it was stopped, before it switched the hub's URL to
    https://: no tablet pins it yet, so it is kept and only the URL step remains. None when that is not the
    case (no certificate, an https:// URL already, or a certificate without every name asked for)."""
    from cryptography import x509

    url = hub.config.get("url") or ""
    if not has_tls(hub.root) or not url.startswith("http://"):
        return None
    pem = cert_pem(hub.root)
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    if not {str(n) for n in names} <= have:
        return None
    d = tls_dir(hub.root)
    log.warning("%s holds a certificate from a tls-init that stopped before switching the hub URL (%s) to "
                "https://; keeping it (no tablet pins it yet) and finishing", d, url)
    return {"cert": str(d / CERT), "key": str(d / KEY), "hosts": sorted(have),
            "not_after": cert.not_valid_after_utc.isoformat(), "sha256": fingerprint(pem), "resumed": True}


def enable_tls(hub: Any, hosts: Iterable[str] = (), *, days: int = VALID_DAYS, force: bool = False,
               port: int | None = None, protect: bool = False, serving: bool = True) -> dict[str, Any]:
    """``partlens hub tls-init``: the certificate for the hub's host (from its URL) and ``hosts``; the hub's
    stored URL becomes https:// (same host; ``port`` if given, else the same port), so new enrolments pin
    the certificate. Tablets enrolled over http:// switch by themselves at their next sync through a
    plain-HTTP hub (``hub serve --plain`` on the old port) that hands them the signed :func:`upgrade_offer`."""
    url = hub.config.get("url")
    parts = urlsplit(url) if url else None
    names = [*hosts, *([parts.hostname] if parts and parts.hostname else [])]
    if not names:
        raise UsageError("name the host or IP address devices use to reach the hub: --host NAME "
                         "(the hub has no URL to take it from)")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"port must be 1..65535, got {port}")
    resumed = _unfinished_init(hub, names) if not force else None
    info = resumed or init_tls(hub.root, names, days=days, force=force, protect=protect)
    if parts and (parts.scheme != "https" or port is not None):
        netloc = parts.netloc if port is None else f"{parts.hostname}:{port}"
        new_url = parts._replace(scheme="https", netloc=netloc).geturl()
        atomic_write_json(hub.root / "hub.json", dict(hub.config, url=new_url))
        hub.config["url"] = new_url
        info["url_changed"] = {"from": url, "to": new_url}
        enrolled = [d for d in hub.store.list_devices() if not d.get("revoked")]
        if enrolled:  # (with none enrolled yet there is nobody to switch: no warning)
            log.warning("hub URL is now %s. The %d tablet(s) enrolled with %s switch at their next sync if a plain "
                        "hub still answers there (`hub serve --plain` on that port); otherwise enrol them again",
                        new_url, len(enrolled), url)
        else:
            log.info("hub URL is now %s", new_url)
    info["url"] = hub.config.get("url")
    # a running `hub serve` started without a certificate keeps serving plain HTTP: enrolments made now (HTTPS,
    # pinned) fail with "wrong version number" until it is restarted (an admin audit)
    if serving:  # (``serving=False``: the caller starts the hub afterwards, e.g. the demo)
        log.warning("restart `partlens hub serve` if it is running: it serves HTTPS with this certificate from its "
                    "next start")
    return info


def upgrade_offer(hub: Any) -> dict[str, Any] | None:
    """The hub's https:// URL and certificate pin, signed with the hub's package-signing key, which every
    tablet already trusts. Sent in every sync plan; a tablet still on http:// verifies the signature and
    switches (over plain HTTP the plan itself could be forged, the signature cannot)."""
    from edge_app.signing import sign_document

    url = hub.config.get("url") or ""
    if not has_tls(hub.root) or not url.startswith("https://"):
        return None
    # the catalogue version dates the offer: a tablet refuses one older than what it already holds (a replay)
    doc = {"url": url, "tls_sha256": fingerprint(cert_pem(hub.root)), "key_id": hub.key.key_id,
           "catalogue_version": hub.store.version()}
    return {"doc": doc, "signature": sign_document(upgrade_offer_bytes(doc), hub.key)}


class ReloadingTLS:
    """The server's TLS context, which follows the certificate files: after ``tls-rotate --activate`` rewrote
    them, the next handshake uses the new certificate, without restarting ``hub serve``.

    uvicorn builds ONE :class:`ssl.SSLContext` at start (:meth:`uvicorn_factory` returns it). Its SNI callback,
    which OpenSSL calls at every handshake (with ``server_name`` None when the client sent none), stats the two
    files and hands the connection a context loaded from them when they changed. A half-written pair (the key
    already new, the certificate not yet) does not load; the previous context serves until the pair matches.
    """

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self._make: Callable[[], ssl.SSLContext] | None = None
        self._stamp: tuple[int, ...] | None = None
        self._current: ssl.SSLContext | None = None

    def _files_stamp(self) -> tuple[int, ...]:
        a, b = self.cert.stat(), self.key.stat()
        return (a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino)

    def uvicorn_factory(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """``uvicorn.Config(ssl_context_factory=...)``: the first context, built by uvicorn's own factory (its
        protocol, ciphers and ALPN settings) from ``ssl_certfile``/``ssl_keyfile``, which must be these files."""
        self._make = default
        self._stamp, self._current = self._files_stamp(), default()
        self._current.sni_callback = self._on_handshake
        return self._current

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: reloaded if the files changed since the last one loaded."""
        if self._make is None or self._current is None:
            raise RuntimeError("ReloadingTLS.current() before uvicorn built the first context")
        try:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._stamp, self._current = stamp, self._make()
                log.warning("hub certificate reloaded from %s (sha256 %s)", self.cert,
                            fingerprint(self.cert.read_text()))
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("hub certificate files changed but do not load yet (%s); serving the previous one", exc)
        return self._current

    def _on_handshake(self, conn: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.current()
        if current is not ctx:
            conn.context = current
