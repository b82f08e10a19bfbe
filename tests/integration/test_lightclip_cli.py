"""LightCLIP through the real CLI: every loss term trains and is logged; the export is a plain open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmembed.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "experiments" / "smoke" / "lightclip.yaml")


def test_fit_logs_every_term_and_exports_a_plain_open_clip_model(tmp_path):
    cli = main(["fit", "-c", SMOKE, f"--data.init_args.root={tmp_path / 'data'}",
                "--trainer.max_epochs=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
                f"--trainer.default_root_dir={tmp_path / 'root'}"])
    metrics = cli.trainer.callback_metrics
    for key in ("train/ins", "train/tok", "train/tok_cos", "train/mlm", "train/mlm_acc", "train/alpha", "train/logit_scale",
                "val/t2i_r1"):
        assert key in metrics, key
    assert 0.0 < float(metrics["train/alpha"]) <= 0.2  # ramping up from 0 during training
    run = Path(cli.trainer.log_dir)
    import open_clip

    # the export is plain CLIP: register its config and let open_clip load the weights strictly
    config = json.loads((run / "open_clip_config.json").read_text())
    assert config["text_cfg"]["pool_type"] == "eos"  # the <mask> row was trained; pooling never picks it
    (tmp_path / "lightclip_smoke_export.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "lightclip_smoke_export.json")
    model = open_clip.create_model("lightclip_smoke_export", pretrained=str(run / "open_clip_model.pt"))
    state = torch.load(run / "open_clip_model.pt", weights_only=True)
    assert not any(k.startswith(("mlm", "fusions", "loss")) for k in state)  # train-only parts dropped
    assert state["token_embedding.weight"].shape[0] == 49408  # the <mask> row is dropped too
    assert cli.model.encoder.model.token_embedding.weight.shape[0] == 49409
    model.eval()
    encoder = cli.model.encoder.eval()
    images = torch.randn(2, 3, 32, 16)
    text = encoder.tokenizer(["a red coat", "a pair of blue trousers"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), encoder.encode_image(images).embedding)
        torch.testing.assert_close(model.encode_text(text), encoder.encode_text(text).embedding)


FASHION = str(REPO / "experiments" / "lightclip" / "fashion_mnist.yaml")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
TINY = ('{"embed_dim": 32, "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 32, "layers": 3, '
        '"head_width": 16}, "text_cfg": {"context_length": 24, "width": 32, "heads": 2, "layers": 3}}')


def test_fashion_mnist_fit_then_test_reports_zero_shot_on_the_test_images(tmp_path):
    import pytest

    if not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist (.ci/run installs it)")
    small = ["--data.init_args.max_train=256", "--data.init_args.batch_size=64", "--data.init_args.max_eval=300",
             f"--model.init_args.encoder.init_args.model_config={TINY}", "--trainer.max_epochs=1",
             f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false"]
    fit = main(["fit", "-c", FASHION, *small])
    assert "val/zeroshot_top1" in fit.trainer.callback_metrics and "val/i2t_r1" in fit.trainer.callback_metrics
    run = Path(fit.trainer.log_dir)
    test = main(["test", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 f"--trainer.logger.init_args.save_dir={tmp_path / 'test'}"])
    metrics = test.trainer.callback_metrics
    assert len(test.datamodule.eval_datasets("test")[1]) == 300  # max_eval of the test split
    for key in ("test/zeroshot_top1", "test/zeroshot_top5", "test/t2i_r1", "test/i2t_r1"):
        assert key in metrics, key
    assert 0 <= float(metrics["test/zeroshot_top1"]) <= float(metrics["test/zeroshot_top5"]) <= 100
