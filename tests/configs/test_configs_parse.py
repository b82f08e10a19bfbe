"""Every YAML under experiments/ parses with the real CLI parser (renamed arguments break CI, not a user's run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmembed.cli import main, parse_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SMOKE = EXPERIMENTS / "smoke" / "clip.yaml"
ALL = sorted(EXPERIMENTS.rglob("*.yaml"))
BASE = [p for p in ALL if p.parent.name == "base"]
FULL = [p for p in ALL if p.parent.name != "base"]
# configs that build without external files (others name local checkpoints or datasets)
SELF_CONTAINED = [EXPERIMENTS / "quickstart.yaml", *sorted((EXPERIMENTS / "smoke").glob("*.yaml"))]


def test_there_are_configs():
    assert SMOKE in ALL and len(BASE) >= 4


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_full_config_parses(path):
    cfg = parse_config(["-c", str(path)])
    assert cfg.model.class_path and cfg.data.class_path


@pytest.mark.parametrize("path", BASE, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_base_trainer_config_parses_on_top_of_an_experiment(path):
    cfg = parse_config(["-c", str(SMOKE), "-c", str(path)])
    assert cfg.trainer.accelerator is not None


@pytest.mark.parametrize("path", SELF_CONTAINED, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_full_config_instantiates(path, tmp_path):
    cli = main(["-c", str(path), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    assert cli.datamodule.processor is not None  # linked from the model at instantiation


def test_parse_rejects_unknown_key(capsys):
    with pytest.raises(SystemExit):
        parse_config(["-c", str(SMOKE), "--model.init_args.no_such_option=1"])
    assert "no_such_option" in capsys.readouterr().err
