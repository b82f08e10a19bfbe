"""Unit tests for RDE's Token Selection Embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.methods.rde.tse import (
    TokenSelectionEmbedding,
    TSEHead,
    gather_tokens,
    select_image_tokens,
    select_text_tokens,
)
from mmembed.types import EmbeddingOutput

SOT, EOT = 49406, 49407


def caption(words: list[int], length: int) -> list[int]:
    """SOT + words + EOT, zero-padded to ``length``."""
    ids = [SOT, *words, EOT]
    return ids + [0] * (length - len(ids))


def causal_attention(text_ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random row-stochastic causal attention: every visible key gets weight > 0."""
    bsz, length = text_ids.shape
    logits = torch.randn(bsz, length, length, generator=torch.Generator().manual_seed(seed))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


# ------------------------------------------------------------ selection
def test_select_image_tokens_hand_made():
    att = torch.zeros(2, 6, 6)
    att[0, 0] = torch.tensor([0.9, 0.05, 0.4, 0.1, 0.3, 0.2])  # CLS has the largest self-weight
    att[1, 0] = torch.tensor([0.5, 0.3, 0.0, 0.2, 0.1, 0.4])
    att[:, 1:] = 5.0  # other query rows are ignored
    before = att.clone()
    idx = select_image_tokens(att, ratio=0.6)  # k = int(5 * 0.6) = 3
    assert idx.dtype == torch.long and idx.shape == (2, 3)
    assert idx.tolist() == [[2, 4, 5], [5, 1, 3]]
    assert torch.equal(att, before)  # the caller's map is untouched
    assert (select_image_tokens(att, 1.0) != 0).all()  # even taking every patch never takes CLS


def test_select_text_tokens_hand_made():
    ids = torch.tensor([caption([11, 12, 13, 14], 10), caption([21, 22], 10)])
    att = torch.zeros(2, 10, 10)
    # row at EOT (position 5 in caption 0, position 3 in caption 1); SOT/EOT get large weights
    att[0, 5, :6] = torch.tensor([0.5, 0.1, 0.05, 0.2, 0.0, 0.15]) + torch.tensor([0, 0, 0, 0, 0.01, 0])
    att[1, 3, :4] = torch.tensor([0.6, 0.1, 0.05, 0.25])
    att[:, 0] = 9.0  # the SOT query row is ignored
    idx, valid = select_text_tokens(att, ids, ratio=0.5)  # k = int(8 * 0.5) = 4
    assert idx.shape == valid.shape == (2, 4) and valid.dtype == torch.bool
    assert idx[0].tolist() == [3, 1, 2, 4]
    assert valid[0].tolist() == [True] * 4
    assert idx[1, :2].tolist() == [1, 2] and valid[1].tolist() == [True, True, False, False]
    for b, eot in enumerate((5, 3)):
        chosen = idx[b][valid[b]]
        assert not ((chosen == 0) | (chosen == eot)).any() and (ids[b, chosen] != 0).all()


@pytest.mark.parametrize(("length", "k"), [(193, 57), (77, 22)])
def test_k_at_ratio_point_three(length, k):
    att = torch.rand(2, length, length)
    if length == 193:
        assert select_image_tokens(att, 0.3).shape == (2, k)
    else:
        ids = torch.tensor([caption(list(range(1, 41)), 77), caption([5, 6, 7], 77)])
        idx, valid = select_text_tokens(causal_attention(ids), ids, 0.3)
        assert idx.shape == (2, k)
        assert valid.sum(1).tolist() == [22, 3]
        assert valid[1, :3].all()  # n_words = 3 < k: exactly the first 3 are pooled


def test_random_text_selection_never_picks_special_or_padding():
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n in (0, 1, 3, 7, 20, 30):
        rows.append(caption(torch.randint(1, 49000, (n,), generator=gen).tolist(), 32))
    ids = torch.tensor(rows)
    idx, valid = select_text_tokens(causal_attention(ids, seed=2), ids, 0.3)  # k = 9
    eot = ids.argmax(-1)
    for b in range(len(rows)):
        chosen = idx[b][valid[b]]
        n_words = int((ids[b] != 0).sum()) - 2
        assert len(chosen) == min(n_words, 9)
        assert not ((chosen == 0) | (chosen == eot[b]) | (ids[b, chosen] == 0)).any()
        assert len(set(idx[b].tolist())) == 9


def test_selection_errors():
    with pytest.raises(ValueError, match="ratio"):
        select_image_tokens(torch.rand(1, 5, 5), 0.0)
    with pytest.raises(ValueError, match="no token"):
        select_image_tokens(torch.rand(1, 5, 5), 0.2)
    with pytest.raises(ValueError, match=r"\(B, L, L\)"):
        select_image_tokens(torch.rand(1, 5, 4), 0.5)
    with pytest.raises(ValueError, match="do not match"):
        select_text_tokens(torch.rand(1, 5, 5), torch.ones(1, 6, dtype=torch.long), 0.5)


# ---------------------------------------------------------------- head
def test_gather_tokens_normalises_and_keeps_order():
    tokens = torch.randn(2, 7, 5)
    idx = torch.tensor([[3, 1], [6, 6]])
    out = gather_tokens(tokens, idx)
    assert out.shape == (2, 2, 5)
    torch.testing.assert_close(out[0, 0], F.normalize(tokens[0, 3], dim=0))
    torch.testing.assert_close(out[1, 1], F.normalize(tokens[1, 6], dim=0))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(gather_tokens(tokens, idx, normalize=False)[0, 1], tokens[0, 1])


def test_head_structure_and_pooling():
    head = TSEHead(8, 12).eval()
    assert head.hidden_dim == 6 and TSEHead(8, 12, hidden_dim=8).hidden_dim == 8
    assert isinstance(head.mlp[1], torch.nn.BatchNorm1d) and head.mlp[1].num_features == 6
    x = F.normalize(torch.randn(3, 4, 8), dim=-1)
    out = head(x)
    assert out.shape == (3, 12)
    per_token = head.fc(x) + head.mlp(x.reshape(12, 8)).view(3, 4, 12)
    torch.testing.assert_close(out, per_token.max(1).values)
    valid = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    masked = head(x, valid)
    torch.testing.assert_close(masked[0], per_token[0, [0, 2]].max(0).values)
    torch.testing.assert_close(masked[1], per_token[1].max(0).values)  # no valid token: pool all
    torch.testing.assert_close(masked[2], out[2])
    with pytest.raises(ValueError, match="valid"):
        head(x, valid[:, :3])


def test_bn_runs_over_all_selected_tokens_in_train_mode():
    head = TSEHead(4, 6).train()
    x = torch.randn(2, 5, 4)
    head(x, torch.tensor([[True] * 5, [True, False, False, False, False]]))
    expected = head.mlp[0](x.reshape(10, 4)).mean(0).detach()  # momentum 0.1 from zero init
    torch.testing.assert_close(head.mlp[1].running_mean, 0.1 * expected)


def test_padding_never_pooled():
    torch.manual_seed(0)
    tse = TokenSelectionEmbedding(embed_dim=16, out_dim=32, select_ratio=0.5).eval()
    ids = torch.tensor([caption([7, 8, 9], 12), caption([3, 4, 5, 6, 7, 8, 9], 12)])
    att = causal_attention(ids, seed=3)
    tokens = torch.randn(2, 12, 16)
    pad_or_special = (ids == 0) | (ids == SOT) | (ids == EOT)
    noise = 1e6 * torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(4))
    loud = torch.where(pad_or_special[..., None], noise, tokens)  # huge, random padding / SOT / EOT features
    out_a = tse.encode_text(EmbeddingOutput(tokens[:, 0], tokens, None, att), ids)
    out_b = tse.encode_text(EmbeddingOutput(loud[:, 0], loud, None, att), ids)
    torch.testing.assert_close(out_a, out_b)
    # and the words themselves do matter
    moved = tokens.clone()
    moved[0, 1:4] += 1.0
    assert not torch.allclose(tse.encode_text(EmbeddingOutput(moved[:, 0], moved, None, att), ids)[0], out_a[0])


def test_output_width_and_gradients():
    tse = TokenSelectionEmbedding().eval()  # 512 -> 1024, R = 0.3; eval: BN uses running stats
    tokens_i = torch.randn(2, 193, 512, requires_grad=True)
    att_i = torch.rand(2, 193, 193, requires_grad=True)
    ids = torch.tensor([caption(list(range(1, 31)), 77), caption([5, 6], 77)])
    tokens_t = torch.randn(2, 77, 512, requires_grad=True)
    att_t = causal_attention(ids).requires_grad_(True)
    img, txt = tse(EmbeddingOutput(tokens_i[:, 0], tokens_i, None, att_i), EmbeddingOutput(tokens_t[:, 0], tokens_t, None, att_t), ids)
    assert img.shape == txt.shape == (2, 1024)
    (img.sum() + txt.sum()).backward()
    assert tokens_i.grad is not None and tokens_i.grad.abs().sum() > 0
    assert tokens_t.grad is not None and tokens_t.grad.abs().sum() > 0
    assert att_i.grad is None and att_t.grad is None  # selection is index-only
    assert tokens_i.grad[:, 0].abs().sum() == 0  # CLS is never selected
    assert tokens_t.grad[1, 4:].abs().sum() == 0  # caption 1: only positions 1, 2 are words
    assert all(p.grad is not None for p in tse.parameters())
    assert set(dict(tse.named_children())) == {"image_head", "text_head"}


def test_missing_outputs_raise():
    tse = TokenSelectionEmbedding(8, 16)
    with pytest.raises(ValueError, match="return_attention"):
        tse.encode_image(EmbeddingOutput(torch.zeros(1, 8), torch.zeros(1, 5, 8)))
    with pytest.raises(ValueError, match="select_ratio"):
        TokenSelectionEmbedding(select_ratio=1.5)


def test_end_to_end_with_tiny_open_clip():
    from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder

    torch.manual_seed(0)
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": [32, 16], "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    encoder = OpenCLIPDualEncoder(model_config=config).eval()
    tse = TokenSelectionEmbedding(embed_dim=32, out_dim=64, select_ratio=0.3).eval()
    images = torch.randn(3, 3, 32, 16)
    ids = torch.tensor([caption([320, 1929, 538], 16), caption(list(range(400, 412)), 16), caption([], 16)])
    img_out = encoder.encode_image(images, return_tokens=True, return_attention=True)
    txt_out = encoder.encode_text(ids, return_tokens=True, return_attention=True)
    assert img_out.attention.shape == (3, 9, 9) and txt_out.attention.shape == (3, 16, 16)
    img, txt = tse(img_out, txt_out, ids)
    assert img.shape == txt.shape == (3, 64)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()  # the empty caption falls back
    idx = select_image_tokens(img_out.attention, 0.3)
    assert idx.shape == (3, 2) and (idx != 0).all()  # k = int(8 * 0.3)
    t_idx, t_valid = select_text_tokens(txt_out.attention, ids, 0.3)  # k = int(14 * 0.3) = 4
    assert t_idx.shape == (3, 4) and t_valid.sum(1).tolist() == [3, 4, 0]
    (img.sum() + txt.sum()).backward()
    assert encoder.model.visual.conv1.weight.grad is not None
    assert encoder.model.token_embedding.weight.grad is not None
