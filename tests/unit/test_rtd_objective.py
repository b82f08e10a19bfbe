"""RTD's batch loss: only the trainable copy learns; the anchor copy, phi and the image tower stay put."""

from __future__ import annotations

import pytest
import torch

from mmembed.losses import nt_xent_union
from mmembed.methods.rtd.module import RTD
from mmembed.methods.rtd.objective import rtd_loss
from mmembed.methods.rtd.triplets import TextTriplet
from mmembed.nn.phi import Phi

TRIPLETS = [TextTriplet("a red car", "make it blue", "a blue car"),
            TextTriplet("a small dog", "make it large", "a large dog"),
            TextTriplet("a green bus", "change the colour to yellow", "a yellow bus")]


def rtd_module(tiny_encoder, tmp_path, **kwargs) -> RTD:
    """RTD on the tiny CLIP with a random phi (written by ``Phi.save``), in training mode: the query
    tower trains, the frozen encoder and phi are pinned to eval mode."""
    encoder = tiny_encoder()
    torch.manual_seed(0)
    path = Phi(encoder.embed_dim, encoder.text_width).save(tmp_path / "phi.pt")
    with pytest.warns(UserWarning, match="no pretrained weights"):  # the tiny CLIP is a random init
        module = RTD(encoder=encoder, phi_checkpoint=str(path), **kwargs)
    return module.train()


def test_rtd_loss_is_nt_xent_over_the_union_and_checks_shapes():
    g = torch.Generator().manual_seed(0)
    anchors, queries = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    torch.testing.assert_close(rtd_loss(anchors, queries), nt_xent_union(anchors, queries, 0.07))
    torch.testing.assert_close(rtd_loss(anchors, queries, temperature=0.5), nt_xent_union(anchors, queries, 0.5))
    assert not torch.allclose(rtd_loss(anchors, queries), rtd_loss(anchors, queries, temperature=0.5))
    for a, q in [(anchors, queries[:, :4]),  # widths differ
                 (anchors, queries[:4]),  # rows differ
                 (anchors[:5], queries[:5]),  # odd: not 2B rows
                 (anchors[0], queries[0])]:  # not (2B, D)
        with pytest.raises(ValueError, match=r"\(2B, D\)"):
            rtd_loss(a, q)


def test_one_step_moves_only_the_trainable_text_encoder(tiny_encoder, tmp_path):
    module = rtd_module(tiny_encoder, tmp_path)  # RTD's noise (0.5, absolute) on the reference embeddings
    frozen, phi, trainable = module.encoder, module.phi, module.query_encoder
    assert not frozen.training and not phi.training and trainable.training
    assert not list(trainable.model.visual.parameters())  # the trainable copy has no image tower
    before = {"frozen": {k: v.clone() for k, v in frozen.state_dict().items()},
              "phi": {k: v.clone() for k, v in phi.state_dict().items()},
              "trainable": {k: v.clone() for k, v in trainable.state_dict().items()}}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    anchors, queries = module.encode_triplets(TRIPLETS, generator=torch.Generator().manual_seed(0))
    loss = rtd_loss(anchors, queries)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is None for p in frozen.model.visual.parameters())  # the image tower is never touched
    opt.step()
    assert all(torch.equal(before["frozen"][k], v) for k, v in frozen.state_dict().items())
    assert all(torch.equal(before["phi"][k], v) for k, v in phi.state_dict().items())
    changed = [k for k, v in trainable.state_dict().items() if not torch.equal(before["trainable"][k], v)]
    assert changed and not any(k.startswith("model.visual") for k in changed)


def test_equals_the_written_out_step_and_refuses_a_training_phi(tiny_encoder, tmp_path):
    module = rtd_module(tiny_encoder, tmp_path, noise_scale=0.0)
    frozen, phi, trainable = module.encoder, module.phi, module.query_encoder.eval()
    torch.manual_seed(1)
    with torch.no_grad():  # the query tower drifts from its frozen origin, so the two towers are told apart
        for p in trainable.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tok = frozen.tokenizer
    with torch.no_grad():
        got_anchors, got_q = module.encode_triplets(TRIPLETS)
        got = rtd_loss(got_anchors, got_q)
        e_r = frozen.encode_text(tok([t.reference for t in TRIPLETS])).embedding
        s = phi(e_r)
        anchors = torch.cat([frozen.encode_text(tok([t.target for t in TRIPLETS])).embedding, e_r])
        q = torch.cat([
            trainable.encode_text(tok([f"a photo of $ that {t.conditioning}" for t in TRIPLETS]), pseudo_tokens=s).embedding,
            trainable.encode_text(tok(["a photo of $"] * 3), pseudo_tokens=s).embedding])
        torch.testing.assert_close(got_anchors, anchors)
        torch.testing.assert_close(got_q, q)
        torch.testing.assert_close(got, nt_xent_union(anchors, q, 0.07))
    phi.train()
    with pytest.raises(ValueError, match="phi must be in eval mode"):
        module.encode_triplets(TRIPLETS)
    phi.eval()
    frozen.train()
    with pytest.raises(ValueError, match="anchor_encoder must be in eval mode"):
        module.encode_triplets(TRIPLETS)


def test_no_anchor_ablation_sends_gradient_through_the_anchors(tiny_encoder, tmp_path):
    module = rtd_module(tiny_encoder, tmp_path, noise_scale=0.0, frozen_anchor=False)
    encoder, phi = module.query_encoder, module.phi  # in training mode: it is the trainable side
    assert encoder.training
    loss = rtd_loss(*module.encode_triplets(TRIPLETS))
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
