"""IRRA baseline: MLM masking rule, identity loss, the reference's parameter groups, and training signal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.methods.irra.module import IRRAModule, id_loss
from mmembed.nn.mlm import IGNORE_INDEX, CrossModalMLMHead, mlm_mask
from mmembed.types import SpecialTokens


@pytest.fixture
def sp(tiny_encoder) -> SpecialTokens:
    """The tiny CLIP's special ids (CLIP BPE, no added mask row: mask 49405, vocabulary 49408)."""
    return tiny_encoder().special_tokens


def captions(sp: SpecialTokens, n: int, length: int = 12, words: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, length), sp.pad, dtype=torch.long)
    ids[:, 0] = sp.sot
    ids[:, 1:1 + words] = torch.randint(1, sp.first_special, (n, words), generator=g)
    ids[:, 1 + words] = sp.eot
    return ids


def test_mlm_mask_rule_and_rates(sp):
    ids = captions(sp, 1000, length=48, words=40)  # long captions: the forced target is rare (0.85^40)
    masked, labels = mlm_mask(ids, 0.15, sp.mask, sp.max_word_id, sp, generator=torch.Generator().manual_seed(1))
    special = (ids == sp.pad) | (ids >= sp.first_special)
    assert torch.equal(masked[special], ids[special])  # padding, SOT, EOT untouched
    assert (labels[special] == IGNORE_INDEX).all()
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])  # targets are the original ids
    assert torch.equal(masked[~selected], ids[~selected])  # only selected positions change
    assert selected.any(1).all()  # every caption with words has a target
    words = ~special
    rate = selected.sum() / words.sum()
    assert abs(float(rate) - (0.15 + 0.85**40 / 40)) < 0.005
    m = selected & (masked == sp.mask)
    same = selected & (masked == ids)
    other = selected & ~m & ~same
    n = selected.sum().float()
    assert abs(float(m.sum() / n) - 0.8) < 0.02
    assert abs(float(same.sum() / n) - 0.1) < 0.02
    assert abs(float(other.sum() / n) - 0.1) < 0.02
    assert (masked[other] >= 1).all() and (masked[other] <= sp.max_word_id).all()
    assert sp.max_word_id == 49404  # CLIP BPE: random replacements are words below the repurposed merge


def test_mlm_mask_forces_one_target_and_validates(sp):
    ids = captions(sp, 50, words=1)
    masked, labels = mlm_mask(ids, 1e-6, sp.mask, sp.max_word_id, sp, generator=torch.Generator().manual_seed(0))
    assert ((labels != 0).sum(1) == 1).all()  # the single word is forced
    assert (masked[:, 1] == sp.mask).all() and torch.equal(labels[:, 1], ids[:, 1])
    only_specials = torch.tensor([[sp.sot, sp.eot, sp.pad, sp.pad]])
    masked, labels = mlm_mask(only_specials, 0.15, sp.mask, sp.max_word_id, sp)
    assert torch.equal(masked, only_specials) and (labels == 0).all()
    with pytest.raises(ValueError, match="prob"):
        mlm_mask(ids, 0.0, sp.mask, sp.max_word_id, sp)


def test_id_loss_is_mean_of_the_two_cross_entropies():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    pids = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = sum(-(F.log_softmax(x, 1)[torch.arange(6), pids]).mean() for x in (a, b)) / 2
    torch.testing.assert_close(id_loss(a, b, pids), expected)


def test_parameter_groups_follow_the_reference_rule(tiny_encoder):
    model = IRRAModule(tiny_encoder(), num_classes=7, cmt_depth=1,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-5, eps=1e-3, weight_decay=4e-5))
    opt = model.configure_optimizers()
    where = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}

    def reference(name):  # IRRA solver/build.py, per parameter
        lr, wd = 1e-5, 4e-5
        if "cross" in name:
            lr = 1e-5 * 5
        if "bias" in name:
            lr, wd = 1e-5 * 2, 0.0
        if "classifier" in name or "mlm_head" in name:
            lr = 1e-5 * 5
        return lr, wd

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(where) == len(named)
    for name, p in named:
        lr, wd = where[id(p)]
        assert (pytest.approx(lr), wd) == reference(name), name
    assert any("cross" in n for n, _ in named) and any("mlm_head" in n for n, _ in named)


def test_losses_backpropagate_and_weights_switch_terms_off(tiny_encoder, sp):
    model = IRRAModule(tiny_encoder(), num_classes=4, cmt_depth=1)
    batch = {"image": torch.randn(6, 3, 32, 16), "text": captions(sp, 6, words=6),
             "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    out = model.compute_loss(batch)
    assert {"sdm", "id", "mlm", "mlm_acc", "img_acc", "txt_acc"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["sdm"] + out["id"] + out["mlm"])
    out["loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad and (name.startswith(("classifier", "mlm.cross_attn", "mlm.mlm_head"))):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    only_sdm = IRRAModule(tiny_encoder(), num_classes=4, id_weight=0.0, mlm_weight=0.0)
    assert only_sdm.classifier is None and only_sdm.mlm is None
    out = only_sdm.compute_loss(batch)
    assert set(out) == {"sdm", "loss"}
    with pytest.raises(ValueError, match="num_classes"):
        IRRAModule(tiny_encoder(), num_classes=0)


def test_cross_modal_mlm_head_learns_a_tiny_task():
    # the masked word is the image's colour: predictable from the image tokens only
    torch.manual_seed(0)
    head = CrossModalMLMHead(width=32, depth=1, vocab_size=50, heads=2)
    colours = torch.randint(0, 2, (64,))
    image = torch.randn(64, 5, 32) * 0.1
    image[:, :, 0] += colours[:, None].float() * 2 - 1  # colour written in the image tokens
    text = torch.randn(1, 4, 32).expand(64, 4, 32)  # the same (masked) caption for all
    labels = torch.full((64, 4), IGNORE_INDEX)
    labels[:, 2] = 10 + colours  # word ids 10 / 11
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(150):
        logits = head(text, image)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (head(text, image)[:, 2].argmax(-1) == labels[:, 2]).float().mean()
    assert loss.item() < 0.1 and acc == 1.0


def test_mlm_head_on_selected_positions_equals_full_logits():
    torch.manual_seed(0)
    head = CrossModalMLMHead(width=32, depth=1, vocab_size=50, heads=2).eval()
    text, image = torch.randn(3, 6, 32), torch.randn(3, 5, 32)
    positions = torch.zeros(3, 6, dtype=torch.bool)
    positions[0, 1] = positions[1, 2] = positions[1, 4] = positions[2, 5] = True
    full = head(text, image)
    torch.testing.assert_close(head(text, image, positions=positions), full[positions])
    labels = torch.zeros(3, 6, dtype=torch.long)
    labels[positions] = torch.tensor([3, 7, 9, 1])
    # the reference's loss: cross-entropy over every position with ignore_index 0
    reference = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(F.cross_entropy(head(text, image, positions), labels[positions]), reference)


def test_mlm_inputs_and_loss(sp):
    from mmembed.nn.mlm import mlm_inputs, mlm_loss

    ids = captions(sp, 20, words=6)
    masked, positions, targets = mlm_inputs(ids, 0.3, sp)
    torch.testing.assert_close(targets, ids[positions])
    assert positions.any(1).all() and masked.shape == ids.shape
    logits = torch.randn(len(targets), sp.vocab_size)
    loss, acc = mlm_loss(logits, targets)
    full = torch.zeros(20, ids.shape[1], sp.vocab_size)
    full[positions] = logits
    labels = torch.where(positions, ids, torch.zeros_like(ids))
    torch.testing.assert_close(loss, F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX))
    assert 0.0 <= float(acc) <= 1.0
    with pytest.raises(ValueError, match="word tokens"):
        mlm_inputs(torch.tensor([[sp.sot, sp.eot, sp.pad]]), 0.15, sp)


def test_contrast_masked_captions_feeds_the_masked_caption_to_sdm_and_id(tiny_encoder, sp):
    from mmembed.losses.identity import sdm
    from mmembed.nn.mlm import mlm_inputs

    batch = {"image": torch.randn(6, 3, 32, 16), "text": captions(sp, 6, words=6),
             "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    for official in (True, False):
        model = IRRAModule(tiny_encoder(), num_classes=4, cmt_depth=1, contrast_masked_captions=official).eval()
        torch.manual_seed(3)
        out = model.compute_loss(batch)
        torch.manual_seed(3)
        masked, _, _ = mlm_inputs(batch["text"], 0.15, model.encoder.special_tokens)  # the draw compute_loss makes
        with torch.no_grad():
            image = F.normalize(model.encoder.encode_image(batch["image"]).embedding, dim=-1)
            seen = masked if official else batch["text"]
            text = F.normalize(model.encoder.encode_text(seen).embedding, dim=-1)
            expected = sdm(text @ image.T, batch["label"], scale=1.0 / 0.02).mean()
        torch.testing.assert_close(out["sdm"], expected)
        assert not torch.equal(masked, batch["text"])
