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
     "mmembed.nn.phi", "mmembed.methods.lincir.objective", "mmembed.methods.rtd.triplets", "mmembed.methods.rtd.objective",
     "mmembed.eval.base", "mmembed.eval.candidates", "mmembed.nn.encoders.base", "mmembed.losses.sigmoid"],
)
def test_lower_layers_do_not_import_lightning(module):
    mods = imported_after(f"import {module}")
    assert "lightning" not in mods and "pytorch_lightning" not in mods
    # heavy backends load lazily, when an encoder is built
    assert not mods & {"open_clip", "diffusers", "transformers"}


# The layer table of the architecture notes: what each layer must not import (static, every module).
_FORBIDDEN = {
    "low": {"mmembed.data", "mmembed.eval", "mmembed.lit", "mmembed.methods", "mmembed.cli", "lightning"},
    "data": {"mmembed.nn", "mmembed.losses", "mmembed.lit", "mmembed.methods", "mmembed.cli"},
    "eval": {"mmembed.lit", "mmembed.methods", "mmembed.cli", "lightning"},
    "lit": {"mmembed.methods", "mmembed.cli"},
}
_LOW = ("types", "distributed", "nn", "losses", "metrics")


def _layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    if part in _LOW:
        return "low"
    if part == "methods":
        return ".".join(module.split(".")[:3])
    return part


def test_layers_import_only_what_the_layer_table_allows():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "mmembed"
    offences = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                banned = any(name == b or name.startswith(b + ".") for b in _FORBIDDEN.get(layer, ()))
                other_method = layer.startswith("mmembed.methods.") and name.startswith("mmembed.methods.") and (
                    not (name == layer or name.startswith(layer + ".")))
                if banned or other_method:
                    offences.append(f"{module} imports {name}")
    assert not offences, offences
