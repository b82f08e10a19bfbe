"""transformers CLIP weights load into the open_clip encoder with the same embeddings."""

from __future__ import annotations

import pytest
import torch

from mmembed.nn.encoders.hf_clip import hf_clip_config, hf_clip_to_open_clip
from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder


def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "hidden_act": "quick_gelu",
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
        projection_dim=16)
    return CLIPModel(config).eval()


def _features(out):  # transformers 5 returns an output object, earlier releases a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("layout", ["folder", "state_dict", "released_text"])
def test_hf_clip_embeddings_equal_after_conversion(tmp_path, layout):
    hf = _tiny_hf_clip()
    hf.save_pretrained(tmp_path / "hf")
    config = hf_clip_config(tmp_path / "hf")
    assert config["quick_gelu"] is True and config["embed_dim"] == 16
    if layout == "folder":
        pretrained = tmp_path / "hf"
    elif layout == "state_dict":
        pretrained = tmp_path / "hf.pt"
        torch.save(hf.state_dict(), pretrained)
    else:  # RTD's release: the text tower alone, under its class name; the image tower comes from elsewhere
        pretrained = tmp_path / "text.pt"
        text = {k: v for k, v in hf.state_dict().items() if k.startswith("text_") or k.startswith("text_model.")}
        torch.save({"CLIPTextModelWithProjection": text}, pretrained)
    encoder = OpenCLIPDualEncoder(model_config=config, pretrained=str(pretrained),
                                  strict=layout != "released_text").eval()
    ids = encoder.tokenizer(["a photo of a red bag", "two dogs on the grass"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_text(ids).embedding,
                                   _features(hf.get_text_features(input_ids=ids)), atol=1e-5, rtol=1e-5)
        if layout != "released_text":
            torch.testing.assert_close(encoder.encode_image(images).embedding,
                                       _features(hf.get_image_features(pixel_values=images)), atol=1e-5, rtol=1e-5)


def test_conversion_names_every_key_and_refuses_unknown_ones():
    hf = _tiny_hf_clip()
    converted = hf_clip_to_open_clip(hf.state_dict())
    built = OpenCLIPDualEncoder(model_config=hf_clip_config_from(hf)).model.state_dict()
    assert set(converted) == {k for k in built if not k.endswith("attn_mask")}
    for key, value in converted.items():
        assert value.shape == built[key].shape, key
    with pytest.raises(ValueError, match="unexpected transformers CLIP key"):
        hf_clip_to_open_clip({"text_model.encoder.layers.0.self_attn.rotary.weight": torch.zeros(1)})


def hf_clip_config_from(hf) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        hf.config.save_pretrained(folder)
        return hf_clip_config(folder)


def test_rtd_query_tower_starts_from_the_released_text_encoder(tmp_path):
    import warnings

    from mmembed.methods.rtd.module import RTD
    from mmembed.nn.phi import Phi

    hf = _tiny_hf_clip()
    hf.save_pretrained(tmp_path / "hf")
    config = hf_clip_config(tmp_path / "hf")
    text = {k: v for k, v in hf.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    torch.save({"CLIPTextModelWithProjection": text}, tmp_path / "rtd_text.pt")
    phi = Phi(16, 32).save(tmp_path / "phi.pt")
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the frozen CLIP is random here
        module = RTD(encoder=OpenCLIPDualEncoder(model_config=config), phi_checkpoint=str(phi),
                     query_checkpoint=str(tmp_path / "rtd_text.pt")).eval()
    ids = module.encoder.tokenizer(["is red and larger", "a photo of a dog"])
    with torch.no_grad():
        want = _features(hf.get_text_features(input_ids=ids))
        torch.testing.assert_close(module.query_encoder.encode_text(ids).embedding, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(module.encoder.encode_text(ids).embedding, want, atol=1e-3)  # the anchor is untouched
    assert all(p.requires_grad for n, p in module.query_encoder.named_parameters() if "logit" not in n)
    torch.save({"token_embedding.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="do not fit this text tower"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        RTD(encoder=OpenCLIPDualEncoder(model_config=config), phi_checkpoint=str(phi),
            query_checkpoint=str(tmp_path / "wrong.pt"))
