"""LightCLIP's MLM branch: fusion placement, image stages, identity at zero init, tied head, learning from the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.methods.lightclip.fusion import FusionMLM, fusion_depths, image_stages, text_tower
from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder
from mmembed.nn.mlm import IGNORE_INDEX

TEXT = {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}


def vit_encoder() -> OpenCLIPDualEncoder:
    torch.manual_seed(0)
    return OpenCLIPDualEncoder(model_config={
        "embed_dim": 32, "text_cfg": dict(TEXT),
        "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 3, "head_width": 16}})


def test_fusion_depths():
    assert fusion_depths(12, 3) == [4, 8, 12]
    assert fusion_depths(3, 3) == [1, 2, 3]
    assert fusion_depths(4, 1) == [4]
    with pytest.raises(ValueError, match="num_fusions"):
        fusion_depths(2, 3)


def test_image_stages_for_vit_and_cnn_towers():
    stages = image_stages(vit_encoder(), torch.randn(2, 3, 16, 16), 3)
    assert [s.shape for s in stages] == [(2, 16, 32)] * 3  # patch tokens only, no class token
    cnn = OpenCLIPDualEncoder(model_config={
        "embed_dim": 32, "text_cfg": dict(TEXT),
        "vision_cfg": {"timm_model_name": "resnet18", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 64}})
    stages = image_stages(cnn, torch.randn(2, 3, 64, 64), 3)
    assert [s.shape for s in stages] == [(2, 64, 128), (2, 16, 256), (2, 4, 512)]  # shallow to deep


def test_stages_come_from_the_contrastive_forward_and_match_the_towers_own_intermediates():
    images = torch.randn(2, 3, 16, 16)
    vit = vit_encoder().eval()
    with torch.no_grad():
        out = vit.encode_image(images, return_tokens=True, return_stages=2)
        torch.testing.assert_close(out.embedding, vit.encode_image(images).embedding)  # same pass, same result
        ref = vit.model.visual.forward_intermediates(images, indices=2, intermediates_only=True, output_fmt="NLC")
    for got, want in zip(out.stages, ref["image_intermediates"], strict=True):
        torch.testing.assert_close(got, want)
    cnn = OpenCLIPDualEncoder(model_config={
        "embed_dim": 32, "text_cfg": dict(TEXT),
        "vision_cfg": {"timm_model_name": "efficientnet_b0", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 64}}).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = cnn.encode_image(images, return_tokens=True, return_stages=3)
        torch.testing.assert_close(out.embedding, cnn.encode_image(images).embedding, rtol=1e-4, atol=1e-5)
        maps = cnn.model.visual.trunk.forward_intermediates(images, indices=3, intermediates_only=True)
    for got, want in zip(out.stages, maps, strict=True):
        torch.testing.assert_close(got, want.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="Lower num_fusions"):
        FusionMLM.from_encoder(vit_encoder(), num_fusions=4)  # a 3-block image tower has 3 stages


def test_zeroed_fusion_blocks_leave_the_text_pass_unchanged_and_head_is_tied():
    enc = vit_encoder().eval()
    mlm = FusionMLM.from_encoder(enc, num_fusions=3).eval()
    plain = FusionMLM.from_encoder(enc, num_fusions=3, fuse_image=False).eval()
    plain.load_state_dict({k: v for k, v in mlm.state_dict().items() if not k.startswith("fusions")})
    for block in mlm.fusions:  # residual branches output 0: each block is the identity
        torch.nn.init.zeros_(block.attn.out_proj.weight)
        torch.nn.init.zeros_(block.attn.out_proj.bias)
        torch.nn.init.zeros_(block.mlp[2].weight)
        torch.nn.init.zeros_(block.mlp[2].bias)
    ids = enc.tokenizer(["a red square", "a blue cross"])
    stages = image_stages(enc, torch.randn(2, 3, 16, 16), 3)
    tower = text_tower(enc)
    with torch.no_grad():
        torch.testing.assert_close(mlm(tower, ids, stages), plain(tower, ids, []))
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, 2] = True
    logits = mlm(tower, ids, stages, positions)
    assert logits.shape == (2, 49408)
    F.cross_entropy(logits, ids[:, 2]).backward()
    assert tower.token_embedding.weight.grad is not None  # the output weight is the token embedding
    assert not any(n.startswith("token_embedding") for n, _ in mlm.named_parameters())  # not a copy


def test_bidirectional_mlm_pass_sees_later_words_and_causal_does_not():
    enc = vit_encoder().eval()
    tower = text_tower(enc)
    ids = enc.tokenizer(["a red square", "a red cross"])  # differ only after position 2
    stages = image_stages(enc, torch.zeros(2, 3, 16, 16), 3)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, 2] = True  # "red": same word, same image, different continuation
    with torch.no_grad():
        causal = FusionMLM.from_encoder(enc, num_fusions=3)(tower, ids, stages, positions)
        torch.manual_seed(0)
        both = FusionMLM.from_encoder(enc, num_fusions=3, bidirectional=True)
        bidir = both(tower, ids, stages, positions)
    torch.testing.assert_close(causal[0], causal[1])  # position 2 cannot see "square" / "cross"
    assert not torch.allclose(bidir[0], bidir[1])


@pytest.mark.parametrize("fuse", [True, False])
def test_masked_colour_is_learnt_only_with_image_fusion(fuse):
    # the masked word is the image's colour: only the fused image can tell it
    torch.manual_seed(0)
    enc = vit_encoder()
    mlm = FusionMLM.from_encoder(enc, num_fusions=3, fuse_image=fuse)
    colours = ["red", "blue"]
    ids = enc.tokenizer([f"a {c} square" for c in colours])  # SOT a colour square EOT
    targets = ids[:, 2].clone()
    opt = torch.optim.Adam([*enc.parameters(), *mlm.parameters()], lr=3e-3)
    tower = text_tower(enc)

    def batch(n: int):
        which = torch.randint(0, 2, (n,))
        images = torch.zeros(n, 3, 16, 16)
        images[:, 0] = (which == 0).float()[:, None, None] * 2 - 1  # red channel on / off
        images[:, 2] = (which == 1).float()[:, None, None] * 2 - 1
        masked = ids[which].clone()
        masked[:, 2] = enc.special_tokens.mask
        labels = torch.full_like(masked, IGNORE_INDEX)
        labels[:, 2] = targets[which]
        return images, masked, labels

    for _ in range(60):
        images, masked, labels = batch(16)
        positions = labels != IGNORE_INDEX
        logits = mlm(tower, masked, image_stages(enc, images, 3), positions)
        loss = F.cross_entropy(logits, labels[positions])
        opt.zero_grad()
        loss.backward()
        opt.step()
    images, masked, labels = batch(200)
    positions = labels != IGNORE_INDEX
    with torch.no_grad():
        acc = (mlm(tower, masked, image_stages(enc, images, 3), positions).argmax(-1) == labels[positions]).float().mean()
    if fuse:
        assert acc > 0.95
    else:
        assert 0.3 < acc < 0.7  # text alone cannot tell the colour: chance between the two
