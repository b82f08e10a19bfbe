"""Import rules: cheap top-level import, and lower layers never pull in Lightning or heavy backends."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_top_level_import_is_cheap():
    mods = imported_after("import mmembed")
    assert not mods & {"torch", "lightning", "open_clip", "diffusers", "transformers", "timm"}


@pytest.mark.parametrize(
    "module",
    ["mmembed.losses", "mmembed.metrics", "mmembed.distributed", "mmembed.nn.heads",
     "mmembed.nn.encoders.open_clip", "mmembed.nn.mlm", "mmembed.types", "mmembed.eval.evaluator",
     "mmembed.eval.zeroshot", "mmembed.data.idx", "mmembed.eval.runs", "mmembed.metrics.cir", "mmembed.data.cir",
     "mmembed.eval.cir_submission", "mmembed.eval.cir", "mmembed.data.synthetic.cir", "mmembed.methods.lincir.keywords",
     "mmembed.methods.lincir.phi", "mmembed.methods.rtd.triplets", "mmembed.methods.rtd.objective"],
)
def test_lower_layers_do_not_import_lightning(module):
    mods = imported_after(f"import {module}")
    assert "lightning" not in mods and "pytorch_lightning" not in mods
    # heavy backends load lazily, when an encoder is built
    assert not mods & {"open_clip", "diffusers", "transformers"}
