"""LightCLIPModule wiring: temperature init and clamp, the mask-token modes, word positions, branches."""

from __future__ import annotations

import math

import pytest
import torch

from mmembed.methods.lightclip.module import LightCLIPModule
from mmembed.nn.mlm import word_positions


def batch(encoder, n: int = 4) -> dict:
    torch.manual_seed(0)
    captions = ["a red coat", "blue jeans and a bag", "a green hat", "black shoes"][:n]
    return {"image": torch.randn(n, 3, 32, 16), "text": encoder.tokenizer(captions), "index": torch.arange(n)}


def test_temperature_starts_at_clip_init_and_is_clamped_after_each_step(tiny_encoder):
    module = LightCLIPModule(tiny_encoder(), num_fusions=1)
    assert module.loss.logit_scale.log_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-4)  # 2.6593
    with torch.no_grad():
        module.loss.logit_scale.log_scale.fill_(7.0)
    optimizer = torch.optim.SGD([module.loss.logit_scale.log_scale], lr=0.0)
    module.optimizer_step(0, 0, optimizer)  # Lightning's step hook: optimizer.step(), then the clamp
    assert module.loss.logit_scale.log_scale.item() == pytest.approx(math.log(100.0))


def test_mask_token_modes(tiny_encoder):
    extra = LightCLIPModule(tiny_encoder(), num_fusions=1)  # default: mask_token="extra"
    assert extra.mask_id == extra.encoder.special_tokens.mask == 49408
    assert extra.encoder.model.token_embedding.weight.shape[0] == 49409
    assert extra.mlm.bias.shape[0] == 49409  # the tied head covers the new row
    reuse = LightCLIPModule(tiny_encoder(), num_fusions=1, mask_token="reuse")
    assert reuse.mask_id == reuse.encoder.special_tokens.mask == 49405
    assert reuse.encoder.model.token_embedding.weight.shape[0] == 49408
    no_mlm = LightCLIPModule(tiny_encoder(), mlm_weight=0.0)
    assert no_mlm.mlm is None and no_mlm.encoder.model.token_embedding.weight.shape[0] == 49408
    with pytest.raises(ValueError, match="mask_token"):
        LightCLIPModule(tiny_encoder(), mask_token="new")


def test_word_positions_exclude_padding_special_and_mask_ids(tiny_encoder):
    encoder = tiny_encoder()
    reuse = encoder.special_tokens
    encoder.add_mask_token()
    extra = encoder.special_tokens
    assert (reuse.mask, extra.mask) == (49405, 49408)
    ids = torch.tensor([[49406, 320, 3360, 49405, 49408, 49407, 0, 0]])  # SOT, 2 words, both masks, EOT, padding
    expected = [[False, True, True, False, False, False, False, False]]
    assert word_positions(ids, reuse).tolist() == expected
    assert word_positions(ids, extra).tolist() == expected


@pytest.mark.parametrize(("tok", "mlm", "keys"), [
    (0.0, 0.0, {"ins"}), (1.0, 0.0, {"ins", "tok", "tok_cos"}), (0.0, 1.0, {"ins", "mlm", "mlm_acc"}),
    (1.0, 1.0, {"ins", "tok", "tok_cos", "mlm", "mlm_acc"})])
def test_each_branch_runs_only_when_weighted_and_the_total_adds_up(tiny_encoder, tok, mlm, keys):
    module = LightCLIPModule(tiny_encoder(), tok_weight=tok, mlm_weight=mlm, num_fusions=1).train()
    b = batch(module.encoder)
    torch.manual_seed(1)
    out = module.compute_loss(b)
    assert keys <= set(out) and not ({"ins", "tok", "mlm"} - keys) & set(out)
    expected = out["ins"] + tok * out.get("tok", 0.0) + mlm * out.get("mlm", 0.0)
    torch.testing.assert_close(out["loss"].detach(), torch.as_tensor(expected))
    out["loss"].backward()
    assert module.encoder.model.visual.conv1.weight.grad is not None


@pytest.mark.parametrize(("name", "proj"), [("mobilenetv3_small_050", None), ("efficientnet_b0", "linear")])
def test_full_loss_trains_a_timm_cnn_tower(name, proj):
    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

    torch.manual_seed(0)
    encoder = OpenCLIPDualEncoder(model_config={
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": proj, "image_size": 64},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}})
    module = LightCLIPModule(encoder, num_fusions=3).train()
    b = batch(encoder)
    b["image"] = torch.randn(4, 3, 64, 64)
    out = module.compute_loss(b)
    assert all(torch.isfinite(out[k]) for k in ("ins", "tok", "mlm"))
    out["loss"].backward()
    fused = [p.grad for block in module.mlm.fusions for p in block.adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in fused)  # the CNN stages reach the MLM loss
    trunk_grads = [p.grad for p in encoder.model.visual.trunk.parameters() if p.grad is not None]
    assert trunk_grads and any(g.abs().sum() > 0 for g in trunk_grads)
