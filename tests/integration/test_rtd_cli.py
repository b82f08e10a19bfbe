"""Zero-shot CIR through the real CLI: LinCIR writes phi, RTD trains on it and exports the query encoder,
`mmembed test` scores the held-out SynthCIR queries from the saved config and checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from mmembed.cli import main
from mmembed.data.synthetic.cir import write_synth_cir

REPO = Path(__file__).resolve().parents[2]
LINCIR = str(REPO / "experiments" / "lincir" / "synth_cir.yaml")
RTD = str(REPO / "experiments" / "rtd" / "rtd_synth.yaml")
TINY = ('{"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, '
        '"head_width": 16}, "text_cfg": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}')


def test_lincir_then_rtd_then_test(tmp_path):
    world = tmp_path / "synth_cir"
    write_synth_cir(world, seed=0)
    common = [f"--data.init_args.root={world}", f"--data.init_args.captions={world}/synth_captions.json",
              f"--model.init_args.encoder.init_args.model_config={TINY}", "--data.init_args.batch_size=16",
              "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    lincir = main(["fit", "-c", LINCIR, *common])
    metrics = lincir.trainer.callback_metrics
    assert {"train/loss", "train/cos", "train/noise_std", "val/cirr_r1", "val/cirr_subset_r1"} <= set(metrics)
    phi = Path(lincir.trainer.log_dir) / "phi.pt"
    assert phi.is_file()

    rtd = main(["fit", "-c", RTD, *common, f"--model.init_args.phi_checkpoint={phi}"])
    run = Path(rtd.trainer.log_dir)
    assert {"train/loss", "val/cirr_r5", "val/cirr_avg"} <= set(rtd.trainer.callback_metrics)
    assert (run / "open_clip_query_model.pt").is_file() and (run / "phi.pt").is_file()
    torch.testing.assert_close(rtd.model.phi.layers[0].weight, lincir.model.phi.layers[0].weight)

    ckpt = next((run / "checkpoints").glob("last*.ckpt"))
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    got = test.trainer.callback_metrics
    assert {"test/cirr_r1", "test/cirr_r50", "test/cirr_subset_r3", "test/cirr_avg"} <= set(got)
    assert 0.0 <= float(got["test/cirr_r50"]) <= 100.0
    assert list(Path(test.trainer.log_dir).glob("ranked_test_cirr.png"))
