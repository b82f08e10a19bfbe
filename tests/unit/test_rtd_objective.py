"""RTD's batch loss: only the trainable copy learns; the anchor copy, phi and the image tower stay put."""

from __future__ import annotations

import pytest
import torch

from mmembed.losses import nt_xent_union
from mmembed.methods.rtd.objective import rtd_loss
from mmembed.methods.rtd.triplets import TextTriplet
from mmembed.nn.phi import Phi

TRIPLETS = [TextTriplet("a red car", "make it blue", "a blue car"),
            TextTriplet("a small dog", "make it large", "a large dog"),
            TextTriplet("a green bus", "change the colour to yellow", "a yellow bus")]


def test_one_step_moves_only_the_trainable_text_encoder(tiny_encoder):
    trainable, frozen = tiny_encoder(), tiny_encoder().eval().requires_grad_(False)
    torch.manual_seed(0)
    phi = Phi(frozen.embed_dim, frozen.model.token_embedding.weight.shape[1]).eval().requires_grad_(False)
    before = {"frozen": {k: v.clone() for k, v in frozen.state_dict().items()},
              "phi": {k: v.clone() for k, v in phi.state_dict().items()},
              "trainable": {k: v.clone() for k, v in trainable.state_dict().items()}}
    opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-3)
    loss = rtd_loss(trainable, frozen, phi, TRIPLETS, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is None for p in trainable.model.visual.parameters())  # the image tower is never touched
    opt.step()
    assert all(torch.equal(before["frozen"][k], v) for k, v in frozen.state_dict().items())
    assert all(torch.equal(before["phi"][k], v) for k, v in phi.state_dict().items())
    changed = [k for k, v in trainable.state_dict().items() if not torch.equal(before["trainable"][k], v)]
    assert changed and not any(k.startswith("model.visual") for k in changed)


def test_equals_the_written_out_step_and_refuses_a_training_phi(tiny_encoder):
    trainable, frozen = tiny_encoder().eval(), tiny_encoder().eval()
    phi = Phi(frozen.embed_dim, frozen.model.token_embedding.weight.shape[1]).eval()
    tok = frozen.tokenizer
    with torch.no_grad():
        got = rtd_loss(trainable, frozen, phi, TRIPLETS, noise_scale=0.0)
        e_r = frozen.encode_text(tok([t.reference for t in TRIPLETS])).embedding
        s = phi(e_r)
        anchors = torch.cat([frozen.encode_text(tok([t.target for t in TRIPLETS])).embedding, e_r])
        q = torch.cat([
            trainable.encode_text(tok([f"a photo of $ that {t.conditioning}" for t in TRIPLETS]), pseudo_tokens=s).embedding,
            trainable.encode_text(tok(["a photo of $"] * 3), pseudo_tokens=s).embedding])
        torch.testing.assert_close(got, nt_xent_union(anchors, q, 0.07))
    with pytest.raises(ValueError, match="phi must be in eval mode"):
        rtd_loss(trainable, frozen, phi.train(), TRIPLETS)
    with pytest.raises(ValueError, match="anchor_encoder must be in eval mode"):
        rtd_loss(trainable, frozen.train(), phi.eval(), TRIPLETS)


def test_no_anchor_ablation_sends_gradient_through_the_anchors(tiny_encoder):
    encoder = tiny_encoder()  # in training mode: it is the trainable side
    phi = Phi(encoder.embed_dim, encoder.text_width).eval()
    loss = rtd_loss(encoder, encoder, phi, TRIPLETS, noise_scale=0.0)
    anchors = encoder.encode_text(encoder.tokenizer([t.target for t in TRIPLETS] + [t.reference for t in TRIPLETS]))
    detached = nt_xent_union(anchors.embedding.detach(), _queries(encoder, phi, anchors.embedding[3:].detach()), 0.07)
    torch.testing.assert_close(loss, detached)  # same value as with constant anchors ...
    (grad,) = torch.autograd.grad(loss, encoder.model.token_embedding.weight)
    (grad_const,) = torch.autograd.grad(detached, encoder.model.token_embedding.weight)
    assert not torch.allclose(grad, grad_const)  # ... but the anchors now pull on the encoder too


def _queries(encoder, phi, e_r):
    s = phi(e_r)
    tok = encoder.tokenizer
    return torch.cat([encoder.encode_text(tok([f"a photo of $ that {t.conditioning}" for t in TRIPLETS]),
                                          pseudo_tokens=s).embedding,
                      encoder.encode_text(tok(["a photo of $"] * 3), pseudo_tokens=s).embedding])
