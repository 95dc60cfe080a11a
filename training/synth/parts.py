"""The synthetic spare-parts catalogue: part numbers, metadata and drawing parameters.

``size_mm`` is the part's characteristic dimension as seen in the rendered view (the
one a scale reference measures): across-flats for nuts, outer diameter for round
parts, overall length for bolts and screws, body length for resistors, width for
fuses and relays. Parts in the same ``look_alike_group`` look (nearly) the same; for
size-only look-alikes a scale reference in the shot is the only way to tell them apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from edge_app.errors import UsageError

PART_NUMBER_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]*$")

# Standard resistor colour code (digit / multiplier exponent), plus tolerance bands.
RESISTOR_DIGIT_COLOURS = ("black", "brown", "red", "orange", "yellow", "green", "blue", "violet", "grey", "white")
RESISTOR_TOLERANCE_COLOURS = {1.0: "brown", 2.0: "red", 5.0: "gold", 10.0: "silver"}


@dataclass(frozen=True)
class Part:
    """One catalogue part. ``shape`` picks the renderer, ``params`` its dimensions (mm)."""

    part_number: str
    name: str
    category: str
    manufacturer: str
    description: str
    size_mm: float
    shape: str
    look_alike_group: str = ""
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The catalogue columns of ``parts.csv`` (without inventory)."""
        return {
            "part_number": self.part_number, "name": self.name, "category": self.category,
            "manufacturer": self.manufacturer, "description": self.description, "size_mm": self.size_mm,
            "look_alike_group": self.look_alike_group,
        }


def resistor_bands(ohms: float, tolerance_pct: float = 5.0) -> list[str]:
    """4-band colour code (digit, digit, multiplier, tolerance) for a resistance in ohms."""
    if ohms < 1.0:
        raise ValueError(f"resistance {ohms} ohm is below the 4-band range")
    exp = 0
    value = ohms
    while value >= 100.0 - 1e-9:
        value /= 10.0
        exp += 1
    while value < 10.0 - 1e-9:
        value *= 10.0
        exp -= 1
    digits = int(round(value))
    if digits == 100:  # rounding pushed it over (e.g. 99.96)
        digits, exp = 10, exp + 1
    if abs(digits * 10.0 ** exp - ohms) > 1e-6 * ohms:
        raise ValueError(f"{ohms} ohm needs more than two significant digits")
    if exp == -1:
        mult = "gold"
    elif exp == -2:
        mult = "silver"
    elif 0 <= exp <= 9:
        mult = RESISTOR_DIGIT_COLOURS[exp]
    else:
        raise ValueError(f"{ohms} ohm is outside the 4-band multiplier range")
    return [RESISTOR_DIGIT_COLOURS[digits // 10], RESISTOR_DIGIT_COLOURS[digits % 10], mult,
            RESISTOR_TOLERANCE_COLOURS[tolerance_pct]]


def _nut(m: int, s: float) -> Part:
    return Part(f"NUT-M{m}", f"Hex nut M{m}", "fasteners", "Bossard",
                f"Hex nut ISO 4032 M{m}, steel 8, zinc plated, {s:g} mm across flats",
                s, "hex_nut", "hex-nut", {"thread_d": float(m), "pitch": {6: 1.0, 8: 1.25, 10: 1.5, 12: 1.75}[m]})


def _washer(m: int, od: float, idia: float) -> Part:
    return Part(f"WSH-M{m}", f"Flat washer M{m}", "fasteners", "Bossard",
                f"Flat washer ISO 7089 M{m}, {idia:g} x {od:g} mm, zinc plated", od, "flat_washer",
                "flat-washer", {"inner_d": idia})


def _spring(m: int, od: float, idia: float) -> Part:
    return Part(f"SWS-M{m}", f"Spring lock washer M{m}", "fasteners", "Bossard",
                f"Split spring lock washer DIN 127 B M{m}, {idia:g} x {od:g} mm, black oxide", od,
                "spring_washer", "spring-washer", {"inner_d": idia})


def _bolt(m: int, length: int, s: float, k: float, pitch: float) -> Part:
    return Part(f"BLT-M{m}X{length}", f"Hex bolt M{m}x{length}", "fasteners", "Würth",
                f"Hex head bolt ISO 4017 M{m}x{length}, 8.8, zinc plated, fully threaded",
                round(length + k, 2), "hex_bolt", "hex-bolt",
                {"thread_d": float(m), "length": float(length), "head_s": s, "head_k": k, "pitch": pitch})


def _cap(m: int, length: int, dk: float, k: float, pitch: float) -> Part:
    return Part(f"CAP-M{m}X{length}", f"Socket head cap screw M{m}x{length}", "fasteners", "Würth",
                f"Socket head cap screw ISO 4762 M{m}x{length}, 12.9, black oxide",
                float(length + k), "cap_screw", "cap-screw",
                {"thread_d": float(m), "length": float(length), "head_d": dk, "head_k": k, "pitch": pitch})


def _bearing(code: str, od: float, idia: float, width: float, sealed: bool) -> Part:
    kind = "metal shields (ZZ)" if sealed else "open"
    return Part(f"BRG-{code}", f"Deep groove ball bearing {code}", "bearings", "SKF",
                f"Deep groove ball bearing {code}, {idia:g}x{od:g}x{width:g} mm, {kind}", od, "bearing",
                "bearing-608" if sealed else "bearing-62xx",
                {"inner_d": idia, "width": width, "shielded": sealed, "label": code})


def _gear(teeth: int, module: float, material: str) -> Part:
    od = module * (teeth + 2)
    mat = {"steel": "C45 steel", "brass": "brass", "nylon": "POM (acetal)"}[material]
    return Part(f"GER-{teeth}T-M{module:g}".replace(".", "P"), f"Spur gear {teeth}T module {module:g}",
                "power transmission", "Mädler",
                f"Spur gear, {teeth} teeth, module {module:g}, {mat}, OD {od:g} mm", od, "spur_gear",
                f"spur-gear-{teeth}t-{material}", {"teeth": teeth, "module": module, "material": material})


def _oring(idia: float, cs: float, material: str) -> Part:
    od = idia + 2 * cs
    mat = {"nbr": "NBR 70 (black)", "fkm": "FKM/Viton 75 (brown)"}[material]
    return Part(f"ORG-{idia:g}X{cs:g}-{material.upper()}".replace(".", "P"), f"O-ring {idia:g}x{cs:g} {material.upper()}",
                "seals", "Trelleborg", f"O-ring {idia:g} x {cs:g} mm, {mat}", od, "o_ring",
                f"o-ring-{material}", {"inner_d": idia, "cross_section": cs, "material": material})


def _clamp(lo: int, hi: int, band: float) -> Part:
    return Part(f"HCL-{lo}-{hi}", f"Hose clamp {lo}-{hi} mm", "hose & fittings", "Norma",
                f"Worm drive hose clamp, W2 stainless, {band:g} mm band, clamping range {lo}-{hi} mm",
                float(hi), "hose_clamp", "hose-clamp", {"band": band, "inner_d": float(hi)})


def _blade_fuse(amps: float, colour: str) -> Part:
    label = f"{amps:g}".replace(".", "P")
    return Part(f"FUS-ATO-{label}A", f"Blade fuse ATO {amps:g} A", "electrical", "Littelfuse",
                f"Automotive blade fuse ATO/ATC {amps:g} A 32 V, {colour}", 19.1, "blade_fuse", "blade-fuse-ato",
                {"amps": amps, "colour": colour})


def _relay(code: str, volts: int, amps: int) -> Part:
    return Part(f"RLY-{code}", f"Automotive relay {volts} V {amps} A", "electrical", "Hella",
                f"Mini ISO automotive relay, {volts} V coil, {amps} A, 5-pin changeover", 28.0, "relay_auto",
                "relay-mini-iso", {"volts": volts, "amps": amps})


def _fitting(kind: str, dn: int, od: float) -> Part:
    inch = {15: '1/2"', 20: '3/4"'}[dn]
    names = {"ELB": "90° elbow", "TEE": "equal tee", "CPL": "hex nipple"}
    return Part(f"FIT-{kind}-DN{dn}", f"Brass {names[kind]} {inch}", "hose & fittings", "Gebo",
                f"Brass {names[kind]} {inch} BSP (DN{dn}), female thread, PN 25",
                round(od * {"ELB": 1.55, "TEE": 2.1, "CPL": 1.9}[kind], 1), f"fitting_{kind.lower()}",
                f"fitting-{kind.lower()}", {"pipe_od": od})


def _resistor(code: str, ohms: float) -> Part:
    bands = resistor_bands(ohms)
    group = "res-" + "-".join(bands[:2])
    return Part(f"RES-{code}", f"Resistor {code} 0.25 W", "electronics", "Vishay",
                f"Carbon film resistor {code} ohm ±5 %, 0.25 W, bands {' '.join(bands)}", 6.3, "resistor", group,
                {"ohms": ohms, "bands": bands})


def _build_parts() -> list[Part]:
    parts = [
        _nut(8, 13.0), _nut(10, 16.0), _nut(12, 18.0),
        _washer(8, 16.0, 8.4), _washer(10, 20.0, 10.5),
        _spring(8, 14.8, 8.1), _spring(10, 18.1, 10.2),
        _bolt(8, 40, 13.0, 5.3, 1.25), _bolt(10, 50, 16.0, 6.4, 1.5), _bolt(8, 60, 13.0, 5.3, 1.25),
        _cap(6, 20, 10.0, 6.0, 1.0), _cap(8, 25, 13.0, 8.0, 1.25),
        _bearing("6204", 47.0, 20.0, 14.0, False), _bearing("6205", 52.0, 25.0, 15.0, False),
        _bearing("608ZZ", 22.0, 8.0, 7.0, True),
        _gear(20, 1.0, "steel"), _gear(20, 2.0, "steel"), _gear(40, 1.0, "steel"),
        _oring(20.0, 2.0, "nbr"), _oring(30.0, 3.0, "nbr"),
        _clamp(12, 22, 9.0), _clamp(20, 32, 9.0),
        _blade_fuse(5, "tan"), _blade_fuse(10, "red"), _blade_fuse(15, "blue"),
        _relay("12V-40A", 12, 40), _relay("24V-30A", 24, 30),
        _fitting("ELB", 15, 21.3), _fitting("ELB", 20, 26.9), _fitting("TEE", 15, 21.3), _fitting("CPL", 15, 21.3),
        Part("VLV-HDL-LEVER", "Ball valve lever handle", "valves", "Bonomi",
             "Replacement lever handle for 1/2\"-3/4\" ball valves, steel, red vinyl grip, 110 mm", 110.0,
             "valve_lever", "", {"colour": "red"}),
        Part("VLV-HDL-TEE", "Ball valve T-handle", "valves", "Bonomi",
             "Replacement T (butterfly) handle for 1/2\" ball valves, aluminium, blue, 56 mm", 56.0,
             "valve_tee", "", {"colour": "blue"}),
        Part("VLV-HDL-WHEEL-80", "Gate valve handwheel 80 mm", "valves", "Bonomi",
             "Cast handwheel for gate valves, 80 mm, 4 spokes, red painted, square bore 8 mm", 80.0,
             "valve_wheel", "valve-wheel", {"spokes": 4}),
        Part("VLV-HDL-WHEEL-100", "Gate valve handwheel 100 mm", "valves", "Bonomi",
             "Cast handwheel for gate valves, 100 mm, 4 spokes, red painted, square bore 10 mm", 100.0,
             "valve_wheel", "valve-wheel", {"spokes": 4}),
        _resistor("220R", 220.0), _resistor("470R", 470.0), _resistor("1K", 1000.0), _resistor("4K7", 4700.0),
        _resistor("10K", 10000.0),
    ]
    # A group of one is no look-alike group.
    sizes: dict[str, int] = {}
    for p in parts:
        sizes[p.look_alike_group] = sizes.get(p.look_alike_group, 0) + 1
    parts = [p if sizes[p.look_alike_group] > 1 else replace(p, look_alike_group="") for p in parts]
    seen: set[str] = set()
    for p in parts:
        if not PART_NUMBER_RE.match(p.part_number) or p.part_number in seen:
            raise RuntimeError(f"bad or duplicate part number {p.part_number!r}")
        seen.add(p.part_number)
    return parts


PARTS: list[Part] = _build_parts()
PARTS_BY_NUMBER: dict[str, Part] = {p.part_number: p for p in PARTS}


def select_parts(part_numbers: list[str] | tuple[str, ...] | None) -> list[Part]:
    """Parts by number, in catalogue order; ``None`` means all. Unknown or repeated numbers are a UsageError."""
    if part_numbers is None:
        return list(PARTS)
    wanted = list(part_numbers)
    if not wanted:
        raise UsageError("parts: empty selection; give at least one part number or omit it for all parts")
    unknown = [p for p in wanted if p not in PARTS_BY_NUMBER]
    if unknown:
        raise UsageError(f"unknown part number(s) {', '.join(unknown)}; valid: {', '.join(PARTS_BY_NUMBER)}")
    dupes = sorted({p for p in wanted if wanted.count(p) > 1})
    if dupes:
        raise UsageError(f"part number(s) given more than once: {', '.join(dupes)}")
    chosen = set(wanted)
    return [p for p in PARTS if p.part_number in chosen]
