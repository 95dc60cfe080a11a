"""The ``mixed`` demo inventory: mostly visually distinct parts plus deliberate size-only look-alikes.

The generator renders 40 parts, 24 of them in size series that a photo without a scale
reference cannot tell apart (M8/M10/M12 nuts, 6204/6205 bearings, ...). A terminal's stock is
not like that: most spare parts differ visibly. ``mixed`` keeps every part that is visually
distinct (no look-alike group, or a group whose members differ in colour or marking: fuses,
relays, resistors), ONE member of each size-only series, plus the two size-only pairs the
product brief names (M8 vs M10 nut, 6204 vs 6205 bearing), so the report still shows how
size look-alikes are confused. The rule is fixed here, not tuned per run.
"""
from __future__ import annotations

DELIBERATE_SIZE_PAIRS = (("NUT-M8", "NUT-M10"), ("BRG-6204", "BRG-6205"))


def size_only_groups() -> dict[str, list[str]]:
    """Look-alike groups whose members differ only in size (their ``size_mm`` differ)."""
    from training.synth import PARTS

    groups: dict[str, list] = {}
    for p in PARTS:
        if p.look_alike_group:
            groups.setdefault(p.look_alike_group, []).append(p)
    return {g: [p.part_number for p in ps] for g, ps in groups.items() if len({p.size_mm for p in ps}) > 1}


def mixed_catalogue() -> tuple[list[str], str]:
    """(part numbers, description) of the ``mixed`` inventory."""
    from training.synth import PARTS

    series = size_only_groups()
    keep_pairs = {pn for pair in DELIBERATE_SIZE_PAIRS for pn in pair}
    first_of_series = {members[0] for members in series.values()}
    in_series = {pn for members in series.values() for pn in members}
    parts = [p.part_number for p in PARTS
             if p.part_number not in in_series or p.part_number in first_of_series or p.part_number in keep_pairs]
    pairs = " and ".join(" vs ".join(pair) for pair in DELIBERATE_SIZE_PAIRS)
    return parts, (f"{len(parts)} of the {len(PARTS)} generated parts: the visually distinct ones, one member of each "
                   f"of {len(series)} size-only series, and the size-only pairs {pairs}")
