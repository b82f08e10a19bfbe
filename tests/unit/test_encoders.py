"""OpenCLIPDualEncoder: per-token outputs, attention maps, local weights, non-square images, timm towers."""

from __future__ import annotations

import pytest
import torch

from mmembed.nn.encoders.checkpoints import infer_grid, load_state_dict_file, resize_pos_embed
from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def tiny_config(image_size=(32, 16), patch=8):
    return {
        "embed_dim": 24,
        "vision_cfg": {"image_size": list(image_size), "patch_size": patch, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": dict(TEXT_CFG),
    }


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return OpenCLIPDualEncoder(model_config=tiny_config()).eval()


def test_image_tokens_and_attention(encoder):
    images = torch.randn(3, 3, 32, 16)
    plain = encoder.encode_image(images)
    full = encoder.encode_image(images, return_tokens=True, return_attention=True)
    assert plain.embedding.shape == (3, 24)
    # every patch token plus CLS, projected into the joint space
    assert full.tokens.shape == (3, 1 + 4 * 2, 24)
    torch.testing.assert_close(full.embedding, plain.embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.tokens[:, 0], plain.embedding, rtol=1e-5, atol=1e-5)
    assert full.attention.shape == (3, 9, 9)
    torch.testing.assert_close(full.attention.sum(-1), torch.ones(3, 9))


def test_text_tokens_mask_and_causal_attention(encoder):
    text = encoder.tokenizer(["a man in a red coat", "hi", "a woman with a long black skirt and a bag"])
    plain = encoder.encode_text(text)
    full = encoder.encode_text(text, return_tokens=True, return_attention=True)
    torch.testing.assert_close(full.embedding, plain.embedding, rtol=1e-5, atol=1e-5)
    eot = text.argmax(-1)
    # global text feature is the EOT token of the per-token output
    torch.testing.assert_close(full.tokens[torch.arange(3), eot], plain.embedding, rtol=1e-5, atol=1e-5)
    expected_mask = torch.arange(16)[None] <= eot[:, None]
    assert torch.equal(full.mask, expected_mask)
    # causal mask: no attention to later positions
    assert torch.all(full.attention.triu(1) == 0)
    torch.testing.assert_close(full.attention.sum(-1), torch.ones(3, 16))


def test_grid_inference_and_resize():
    assert infer_grid(196, (24, 8)) == (14, 14)
    assert infer_grid(32, (8, 4)) == (8, 4)
    pos = torch.randn(1 + 14 * 14, 8)
    assert resize_pos_embed(pos, (14, 14)) is pos
    out = resize_pos_embed(pos, (24, 8))
    assert out.shape == (1 + 24 * 8, 8)
    torch.testing.assert_close(out[0], pos[0])  # CLS position kept
    const = torch.ones(1 + 16, 4) * 3.0
    torch.testing.assert_close(resize_pos_embed(const, (8, 2), mode="bilinear")[1:], torch.full((16, 4), 3.0))
    with pytest.raises(ValueError):
        resize_pos_embed(pos, (24, 8), old_grid=(10, 10))


def test_pretrained_roundtrip_other_size(tmp_path, encoder):
    weights, config = encoder.export(tmp_path)
    assert config.is_file()
    same = OpenCLIPDualEncoder(model_config=tiny_config(), pretrained=str(weights)).eval()
    images = torch.randn(2, 3, 32, 16)
    torch.testing.assert_close(same.encode_image(images).embedding, encoder.encode_image(images).embedding)
    # load into a non-square model of another size: positions are interpolated (4x2 grid -> 6x2)
    bigger = OpenCLIPDualEncoder(model_config=tiny_config((48, 16)), pretrained=str(weights))
    assert bigger.model.visual.positional_embedding.shape == (1 + 6 * 2, 32)
    expected = resize_pos_embed(encoder.model.visual.positional_embedding.detach(), (6, 2), old_grid=(4, 2))
    torch.testing.assert_close(bigger.model.visual.positional_embedding.detach(), expected)


def test_load_lightning_style_checkpoint(tmp_path, encoder):
    sd = {f"encoder.model.{k}": v for k, v in encoder.model.state_dict().items()}
    sd["loss.logit_scale.log_scale"] = torch.tensor(1.0)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "x.ckpt")
    loaded = load_state_dict_file(tmp_path / "x.ckpt")
    assert set(loaded) == set(encoder.model.state_dict())


def test_bad_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        OpenCLIPDualEncoder(model_config=tiny_config(), pretrained=str(tmp_path / "missing.pt"))
    torch.save({"visual.nonsense": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        OpenCLIPDualEncoder(model_config=tiny_config(), pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="model_name"):
        OpenCLIPDualEncoder()


def test_named_architecture_builds_offline():
    enc = OpenCLIPDualEncoder(model_name="ViT-B-16", image_size=(384, 128))
    assert enc.model.visual.positional_embedding.shape == (1 + 24 * 8, 768)
    tokens = enc.tokenizer(["a person"])
    assert tokens.shape == (1, 77)


def test_timm_tower_tokens():
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 64},
        "text_cfg": dict(TEXT_CFG),
    }
    enc = OpenCLIPDualEncoder(model_config=cfg).eval()
    images = torch.randn(2, 3, 64, 64)
    out = enc.encode_image(images, return_tokens=True)
    assert out.embedding.shape == (2, 24)
    assert out.tokens.shape == (2, 1 + 4 * 4, 24)
    with pytest.raises(NotImplementedError):
        enc.encode_image(images, return_attention=True)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenetv2_050"])
def test_cnn_tower_tokens_average_to_the_pooled_embedding(name):
    # avg-pool + linear head: projecting every spatial token and averaging equals the tower's output
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 96},
        "text_cfg": dict(TEXT_CFG),
    }
    enc = OpenCLIPDualEncoder(model_config=cfg).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = enc.encode_image(images, return_tokens=True)
        plain = enc.encode_image(images).embedding
    assert out.tokens.shape == (2, 3 * 3, 24)  # stride 32: a 3x3 grid of patch tokens
    torch.testing.assert_close(out.tokens.mean(1), plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embedding, plain)


def test_mobilenetv3_tokens_go_through_its_nonlinear_head():
    # timm_proj=None: timm's conv head + classifier is the projection (a linear proj crashes on 3.3.0);
    # each location runs through that head, so a location's token is the embedding of a uniform image of it
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "mobilenetv3_small_050", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": None, "image_size": 96},
        "text_cfg": dict(TEXT_CFG),
    }
    enc = OpenCLIPDualEncoder(model_config=cfg).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = enc.encode_image(images, return_tokens=True)
        fm = enc.model.visual.trunk.forward_features(images)  # (2, C, 3, 3)
        cell = fm[:, :, 1:2, 2:3].expand(-1, -1, 3, 3)  # a map whose every location is location (1, 2)
        expected = enc.model.visual.head(enc.model.visual.trunk.forward_head(cell))
    assert out.tokens.shape == (2, 9, 24)  # in the joint space, not the trunk's 288 channels
    torch.testing.assert_close(out.tokens[:, 1 * 3 + 2], expected, rtol=1e-4, atol=1e-5)


def test_added_mask_token_pools_at_eot_and_is_dropped_on_export(tmp_path):
    torch.manual_seed(0)
    enc = OpenCLIPDualEncoder(model_config=tiny_config()).eval()
    text = enc.tokenizer(["a red coat", "two blue shoes and a bag"])
    with torch.no_grad():
        before = enc.encode_text(text).embedding
    mask_id = enc.add_mask_token()
    assert mask_id == 49408 and enc.add_mask_token() == 49408  # idempotent
    assert enc.model.token_embedding.weight.shape[0] == 49409
    masked = text.clone()
    masked[:, 1] = mask_id
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_text(text).embedding, before)  # eos == argmax pooling on plain text
        out = enc.encode_text(masked, return_tokens=True)
        eot = (masked == 49407).int().argmax(1)
        torch.testing.assert_close(out.embedding, out.tokens[torch.arange(2), eot])
        # regression: argmax pooling would take the <mask> position (the highest id) as the end of text
        assert (masked.argmax(1) == 1).all() and not torch.equal(masked.argmax(1), eot)
        torch.testing.assert_close(enc.model.encode_text(masked), out.embedding)
    weights, config = enc.export(tmp_path)
    state = torch.load(weights, weights_only=True)
    assert state["token_embedding.weight"].shape[0] == 49408
    import json

    import open_clip

    plain = open_clip.CLIP(**json.loads(config.read_text()))
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().encode_text(text), before)


def test_processor_transforms_non_square(encoder):
    from PIL import Image

    proc = encoder.processor
    img = Image.new("RGB", (50, 120), (200, 10, 10))
    assert proc.eval_image_transform(img).shape == (3, 32, 16)
    assert proc.train_image_transform(img).shape == (3, 32, 16)


def test_pseudo_token_equals_the_real_word(encoder):
    # composed-query invariant: writing a word's own embedding into the "$" slot gives encode_text
    # of the sentence with that word
    words = encoder.tokenizer(["red", "tall"])[:, 1]  # single-token words
    prompts = encoder.tokenizer(["a photo of $ that is small", "a photo of $ that is small"])
    plain = encoder.tokenizer(["a photo of red that is small", "a photo of tall that is small"])
    assert (prompts == 259).sum(1).tolist() == [1, 1]
    with torch.no_grad():
        pseudo = encoder.model.token_embedding.weight[words]  # (2, W)
        got = encoder.encode_text(prompts, pseudo_tokens=pseudo).embedding
        want = encoder.encode_text(plain).embedding
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad_in = pseudo.clone().requires_grad_(True)
    encoder.encode_text(prompts, pseudo_tokens=grad_in).embedding.sum().backward()
    assert grad_in.grad.abs().sum() > 0  # the projection module trains through the slot
    with pytest.raises(ValueError, match="no pseudo-token placeholder"):
        encoder.encode_text(encoder.tokenizer(["a photo", "a photo of $"]), pseudo_tokens=pseudo)


def test_preprocessing_options_match_torchvision_written_out():
    from PIL import Image
    from torchvision.transforms import InterpolationMode as IM
    from torchvision.transforms import functional as TF

    from mmembed.nn.encoders.transforms import OPENAI_MEAN, OPENAI_STD, build_image_transforms

    image = Image.fromarray((torch.rand(40, 20, 3) * 255).to(torch.uint8).numpy())  # 40 high, 20 wide

    def by_hand(img):
        return TF.normalize(TF.to_tensor(img), OPENAI_MEAN, OPENAI_STD)

    _, crop = build_image_transforms((16, 16), train_augment="none", resize="shorter_side_crop")
    expected = by_hand(TF.center_crop(TF.resize(image, [32, 16], interpolation=IM.BICUBIC), [16, 16]))
    torch.testing.assert_close(crop(image), expected)  # aspect kept: 40x20 -> 32x16, centre 16x16
    _, tall = build_image_transforms((24, 8), train_augment="none", resize="shorter_side_crop")
    torch.testing.assert_close(tall(image), by_hand(TF.center_crop(TF.resize(image, [24, 12], interpolation=IM.BICUBIC),
                                                                  [24, 8])))
    _, squash = build_image_transforms((16, 16), train_augment="none", interpolation="bilinear")
    torch.testing.assert_close(squash(image), by_hand(TF.resize(image, [16, 16], interpolation=IM.BILINEAR)))
    assert not torch.allclose(squash(image), build_image_transforms((16, 16), train_augment="none")[1](image))
    with pytest.raises(ValueError, match="resize must be"):
        build_image_transforms((16, 16), resize="stretch")


def test_position_grid_interpolation_follows_the_option(tmp_path):
    from mmembed.nn.encoders.checkpoints import resize_pos_embed

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": [32, 16], "patch_size": 8, "width": 16, "layers": 1,
                                          "head_width": 8},
           "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    source = OpenCLIPDualEncoder(model_config=cfg)
    torch.save(source.model.state_dict(), tmp_path / "w.pt")
    table = source.model.state_dict()["visual.positional_embedding"]
    for mode in ("bicubic", "bilinear"):
        built = OpenCLIPDualEncoder(model_config=cfg, image_size=(48, 16), pretrained=str(tmp_path / "w.pt"),
                                    pos_embed_interpolation=mode)
        want = resize_pos_embed(table, (6, 2), old_grid=(4, 2), mode=mode)
        torch.testing.assert_close(built.model.visual.positional_embedding.detach(), want)
