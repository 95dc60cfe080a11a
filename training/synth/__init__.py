"""Synthetic spare-parts images: the fixture source for tests, benchmarks and the demo.

``generate(out_dir, ...)`` writes the dataset layout of docs/ARCHITECTURE.md;
``PARTS`` lists the part definitions; ``render_part`` draws one part on a transparent
layer at a known scale (tests read its geometry, e.g. resistor band centres).
"""
from __future__ import annotations

from .generate import GenerateResult, generate, image_seed, render_image
from .parts import PARTS, Part, resistor_bands, select_parts
from .render import PartRender, render_part

__all__ = ["GenerateResult", "PARTS", "Part", "PartRender", "generate", "image_seed", "render_image", "render_part",
           "resistor_bands", "select_parts"]
