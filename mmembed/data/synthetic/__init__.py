"""Procedural synthetic worlds that ship with mmembed (no downloads).

* **SynthPedes** (person ReID / text-to-image person retrieval): rendered pedestrians with CUHK-PEDES-style
  captions, written in the CUHK-PEDES layout. Build one with :func:`write_synth_pedes` or
  ``python -m mmembed.data.synthetic synth-pedes --out DIR --ids N --seed S``.
* **SynthCIR** (composed image retrieval): rendered objects with one-attribute modification texts, written
  in the CIRR layout. Build one with :func:`write_synth_cir` or ``mmembed-data synth-cir --out DIR --seed S``.

Importing this package has no side effects and imports nothing heavy: the names below are resolved lazily on
first access (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # SynthPedes: attributes and rendering
    "PersonAttributes": "persons",
    "attribute_vocabulary": "persons",
    "sample_identities": "persons",
    "render_person": "persons",
    # SynthPedes: captions
    "make_caption": "captions",
    "make_captions": "captions",
    # SynthPedes: dataset writer and command line
    "write_synth_pedes": "pedes",
    "synth_pedes_meta": "pedes",
    "synth_pedes_matches": "pedes",
    "split_sizes": "pedes",
    "SYNTH_PEDES_VERSION": "pedes",
    # SynthCIR: composed image retrieval in the CIRR layout
    "write_synth_cir": "cir",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from mmembed.data.synthetic.pedes import (
        SYNTH_PEDES_VERSION,
        split_sizes,
        synth_pedes_matches,
        synth_pedes_meta,
        write_synth_pedes,
    )
    from mmembed.data.synthetic.captions import make_caption, make_captions
    from mmembed.data.synthetic.cir import write_synth_cir
    from mmembed.data.synthetic.persons import PersonAttributes, attribute_vocabulary, render_person, sample_identities


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
