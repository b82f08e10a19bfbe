"""Constructor arguments declared once: inherited (forwarded **kwargs) arguments through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmembed.cli import main, parse_config

REPO = Path(__file__).resolve().parents[2]
RDE = str(REPO / "experiments" / "smoke" / "rde.yaml")


def test_help_lists_inherited_arguments_with_types_and_docs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--model.help", "mmembed.methods.rde.module.RDEModule"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    # RDE's own, EmbeddingModule's and TrainModule's arguments, each with its type and docstring
    assert "--model.tse_dim TSE_DIM TSE embedding width. (type: int, default: 1024)" in text
    assert "--model.ks" in text and "R@K cut-offs." in text
    assert "--model.ema_decay EMA_DECAY" in text and "exponential moving average" in text
    assert "--model.lr_scheduler_interval" in text


def test_a_misspelt_inherited_key_fails_while_parsing(tmp_path, capsys):
    for bad in ("--model.init_args.ema_decy=0.9", "--model.init_args.eval_chunk=8",
                "--data.init_args.eval_batchsize=4"):
        with pytest.raises(SystemExit):
            parse_config(["-c", RDE, bad])
        assert not (tmp_path / "runs").exists()  # nothing was built or written


def test_inherited_arguments_reach_the_module_and_its_hyperparameters(tmp_path):
    cli = main(["-c", RDE, f"--data.init_args.root={tmp_path / 'data'}", "--model.init_args.ks=[1, 3]",
                "--model.init_args.ema_decay=0.99", "--model.init_args.eval_chunk_size=7",
                "--data.init_args.eval_batch_size=5"], run=False)
    h = cli.model.hparams
    assert tuple(h.ks) == (1, 3) and h.ema_decay == 0.99 and h.eval_chunk_size == 7
    assert h.lr_scheduler_interval == "epoch" and h.tse_dim == 64  # a default and a config value
    assert cli.datamodule.eval_batch_size == 5 and cli.datamodule.batch_size == 8
    assert cli.datamodule.processor is not None  # linked from the model
