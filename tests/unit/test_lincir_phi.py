"""LinCIR's phi (shape, determinism, own checkpoint), input noise and loss; one language-only step."""

from __future__ import annotations

import pytest
import torch

from mmembed.methods.lincir.keywords import mask_keywords
from mmembed.methods.lincir.objective import lincir_loss
from mmembed.nn.phi import Phi, noise_std, noisy_embeddings


def test_phi_shapes_eval_determinism_and_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    phi = Phi(16, 24)
    x = torch.randn(5, 16)
    assert phi(x).shape == (5, 24) and phi.config["hidden_dim"] == 64
    phi.eval()
    torch.testing.assert_close(phi(x), phi(x))  # dropout off
    path = phi.save(tmp_path / "phi.pt", steps=3)
    again = Phi.load(path).eval()
    torch.testing.assert_close(again(x), phi(x))
    assert torch.load(path, weights_only=True)["metadata"] == {"steps": 3}
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a phi checkpoint"):
        Phi.load(tmp_path / "other.pt")


def test_noise_level_is_per_sample_between_zero_and_scale():
    e = torch.randn(2000, 64)
    noisy = noisy_embeddings(e, scale=0.5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, written out: e + scale * u * eps
    u, eps = torch.rand(2000, 1, generator=g), torch.randn(2000, 64, generator=g)
    torch.testing.assert_close(noisy, e + 0.5 * u * eps)
    assert 0.2 < (noisy - e).std(1).mean() < 0.3  # E[0.5 u] = 0.25
    assert torch.equal(noisy_embeddings(e, 0.0), e)
    with pytest.raises(ValueError):
        noisy_embeddings(e, -1.0)


def test_relative_noise_scales_with_the_embedding_norm():
    e = torch.randn(4000, 64) * 3.0  # norms about 3 * sqrt(64) = 24
    assert noise_std(e, 0.5) == 0.5  # absolute: the papers' setting
    sigma = noise_std(e, 0.5, relative=True)
    assert sigma == pytest.approx(0.5 * float(e.norm(dim=-1).mean()) / 8.0)
    noise = noisy_embeddings(e, sigma, generator=torch.Generator().manual_seed(0)) - e
    u1 = noise.norm(dim=-1).max() / e.norm(dim=-1).mean()  # the largest draws have u close to 1
    assert 0.4 < float(u1) < 0.7
    assert noise_std(2 * e, 0.5, relative=True) == pytest.approx(2 * sigma)


def test_loss_is_mse_with_a_constant_target():
    pred = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    loss = lincir_loss(pred, target)
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean())
    loss.backward()
    assert target.grad is None and pred.grad is not None


def test_one_language_only_step_trains_phi_and_leaves_clip_frozen(tiny_encoder):
    encoder = tiny_encoder().eval().requires_grad_(False)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    captions = ["a red coat on a chair", "a dog playing in the snow"]
    width = encoder.model.token_embedding.weight.shape[1]
    phi = Phi(encoder.embed_dim, width)
    opt = torch.optim.AdamW(phi.parameters(), lr=1e-3)
    with torch.no_grad():
        target = encoder.encode_text(encoder.tokenizer(captions)).embedding
    masked = encoder.tokenizer([mask_keywords(c) for c in captions])
    tokens = phi(noisy_embeddings(target, 1.0))
    loss = lincir_loss(encoder.encode_text(masked, pseudo_tokens=tokens).embedding, target)
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in phi.parameters())
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_pic2word_architecture_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    phi = Phi(16, 24, arch="pic2word").eval()
    kinds = [type(m).__name__ for m in phi.layers]
    assert kinds == ["Linear", "Dropout", "ReLU", "Linear", "Dropout", "ReLU", "Linear"]
    assert phi.config["hidden_dim"] == 512 and phi.config["dropout"] == 0.1
    x = torch.randn(3, 16)
    torch.testing.assert_close(Phi.load(phi.save(tmp_path / "p.pt")).eval()(x), phi(x))
    with pytest.raises(ValueError, match="arch"):
        Phi(16, 24, arch="searle")


def test_released_lincir_and_pic2word_files_load(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    lincir = Phi(16, 24, hidden_dim=32).eval()
    torch.save({"Phi": lincir.state_dict()}, tmp_path / "lincir_phi.pt")  # LinCIR / SEARLE's release layout
    loaded = Phi.load(tmp_path / "lincir_phi.pt")
    assert loaded.config == {"input_dim": 16, "output_dim": 24, "hidden_dim": 32, "dropout": 0.5, "arch": "lincir"}
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded.eval()(x), lincir(x))

    class Img2Text(nn.Module):  # Pic2Word's mapping network as its release names it
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(d, 32), nn.Dropout(0.1), nn.ReLU()) for d in (16, 32)])
            self.fc_out = nn.Linear(32, 24)

        def forward(self, e: torch.Tensor) -> torch.Tensor:
            return self.fc_out(self.layers(e))

    pic2word = Img2Text().eval()
    state = {f"module.{k}": v for k, v in pic2word.state_dict().items()}  # saved from DataParallel
    torch.save({"epoch": 30, "state_dict_img2text": state}, tmp_path / "pic2word.pt")
    loaded = Phi.load(tmp_path / "pic2word.pt").eval()
    assert loaded.config["arch"] == "pic2word" and loaded.config["dropout"] == 0.1
    torch.testing.assert_close(loaded(x), pic2word(x))
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="released LinCIR"):
        Phi.load(tmp_path / "other.pt")
