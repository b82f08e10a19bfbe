"""RDE pieces around the module: caption augmentation, parameter groups, test similarity, noise in the datamodule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmembed.methods.rde.augment import augment_tokens
from mmembed.methods.rde.module import RDEModule
from mmembed.methods.rde.noise import CaptionShuffle, NoiseIndexFile, noise_index


def test_augment_identity_when_off_and_specials_preserved(tiny_encoder):
    sp = tiny_encoder().special_tokens
    SOT, EOT = sp.sot, sp.eot
    ids = torch.tensor([[SOT, 10, 11, 12, 13, EOT, 0, 0], [SOT, 20, EOT, 0, 0, 0, 0, 0]])
    assert torch.equal(augment_tokens(ids, p=0.0, special=sp), ids)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = augment_tokens(ids, p=0.5, special=sp, generator=g)
        for row in out:
            assert row[0] == SOT
            assert (row == EOT).sum() == 1
            eot = int((row == EOT).nonzero())
            assert torch.all(row[eot + 1:] == 0)  # zero padding after EOT, deletions compacted
            assert torch.all(row[1:eot] > 0)


def test_augment_rates_match_spec(tiny_encoder):
    sp = tiny_encoder().special_tokens
    g = torch.Generator().manual_seed(1)
    words = torch.randint(1, 40000, (4000, 30))
    ids = torch.cat([torch.full((4000, 1), sp.sot), words, torch.full((4000, 1), sp.eot)], dim=1)
    out = augment_tokens(ids, p=0.2, special=sp, generator=g)
    lengths = (out > 0).sum(1) - 2
    deleted = 30 - lengths  # 0.2 * 0.2 = 4% of words deleted
    assert deleted.float().mean() / 30 == pytest.approx(0.04, abs=0.004)
    masked = (out == sp.mask).sum() / (4000 * 30)  # 0.2 * 0.6 = 12% masked
    assert float(masked) == pytest.approx(0.12, abs=0.006)


def test_parameter_groups_follow_the_reference(tiny_encoder):
    model = RDEModule(tiny_encoder(), tse_dim=32,
                      optimizer=lambda p: torch.optim.Adam(p, lr=1e-5, eps=1e-3, weight_decay=4e-5))
    opt = model.configure_optimizers()
    lrs = sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert [(lr, wd) for lr, wd, _ in lrs] == [(1e-5, 4e-5), (2e-5, 0.0), (1e-3, 0.0), (1e-3, 4e-5)]
    n_params = sum(n for *_, n in lrs)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])


def test_main_view_scores_mean_of_bge_and_tse(tiny_encoder):
    model = RDEModule(tiny_encoder(), tse_dim=32).eval()
    proc = model.processor
    texts = ["a man in a red coat", "a woman with a bag", "blue jeans"]
    batch_q = {"text": proc.tokenizer(texts)}
    batch_g = {"image": torch.randn(4, 3, 32, 16)}
    with torch.no_grad():
        q, g = model.encode_query_batch(batch_q), model.encode_gallery_batch(batch_g)
    main = F.normalize(q[""], dim=-1) @ F.normalize(g[""], dim=-1).T
    expected = (q["bge"] @ g["bge"].T + q["tse"] @ g["tse"].T) / 2
    torch.testing.assert_close(main, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_tse", [True, False])
def test_grouped_ccd_losses_equal_per_batch_losses(use_tse, tiny_encoder):
    # CCD encodes several training-sized batches per forward; in eval mode every pair's loss must
    # equal the loss computed on its own training-sized batch (negatives from that batch only).
    model = RDEModule(tiny_encoder(), tse_dim=32, use_tse=use_tse, text_aug_p=0.0).eval()
    g = torch.Generator().manual_seed(0)
    n, group = 10, 4  # the last group is short, as at the end of an epoch
    batch = {"image": torch.randn(n, 3, 32, 16, generator=g),
             "text": model.processor.tokenizer([f"person {i} wearing {'red' if i % 3 else 'blue'}" for i in range(n)]),
             "label": torch.tensor([0, 1, 0, 2, 3, 3, 4, 5, 5, 6])}
    with torch.no_grad():
        lb, lt, _ = model._losses(batch, group=group)
        parts = [model._losses({k: v[s:s + group] for k, v in batch.items()}) for s in range(0, n, group)]
    torch.testing.assert_close(lb, torch.cat([p[0] for p in parts]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lt, torch.cat([p[1] for p in parts]), rtol=1e-5, atol=1e-6)
    assert lb.shape == (n,) and (lb > 0).any()
    with pytest.raises(ValueError, match="ccd_forward_batches"):
        RDEModule(tiny_encoder(), ccd_forward_batches=0)


def test_caption_noise_generators(tmp_path):
    shuffle = CaptionShuffle(0.5, seed=1)
    assert np.array_equal(shuffle(100), noise_index(100, 0.5, 1))
    np.save(tmp_path / "idx.npy", noise_index(50, 0.2))
    assert np.array_equal(NoiseIndexFile(str(tmp_path / "idx.npy"))(50), noise_index(50, 0.2))
    with pytest.raises(ValueError, match="50 entries"):
        NoiseIndexFile(str(tmp_path / "idx.npy"))(51)


def test_cosine_statistics_split_clean_noisy_and_negatives(tiny_encoder):
    model = RDEModule(tiny_encoder(), tse_dim=32)
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, (float(value), kw.get("batch_size")))
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.3],
                        [0.4, 0.8, 0.5, 0.6],
                        [0.0, 0.7, 0.2, 0.1],
                        [0.3, 0.2, 0.6, 0.5]])
    batch = {"label": torch.tensor([0, 1, 0, 2]), "index": torch.tensor([3, 0, 1, 2])}
    model._clean_flags = np.array([True, False, True, True])  # by dataset index: rows 1 and 3 are clean
    model._log_cosines(sim, batch)
    assert logged["train/cos_pair"] == (pytest.approx((0.9 + 0.8 + 0.2 + 0.5) / 4), 4)
    assert logged["train/cos_clean"] == (pytest.approx((0.9 + 0.8 + 0.5) / 3), 3)  # indices 3, 0, 2
    assert logged["train/cos_noisy"] == (pytest.approx(0.2), 1)  # index 1
    neg = torch.tensor([0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.1, 0.3, 0.2, 0.6])  # different-pid entries
    assert logged["train/cos_neg"][0] == pytest.approx(float(neg.mean()))
    assert logged["train/cos_neg_std"][0] == pytest.approx(float(neg.std()))


def test_rde_fits_from_plain_loaders_and_needs_a_datamodule_only_for_ccd(tiny_encoder):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from mmembed.methods.rde.module import RDEModule

    def fit(use_ccd: bool) -> RDEModule:
        encoder = tiny_encoder()
        items = [{"image": torch.rand(3, 32, 16), "text": f"a person in a {c} coat", "label": i % 2, "index": i}
                 for i, c in enumerate(["red", "blue", "green", "black"] * 2)]
        loader = DataLoader(items, batch_size=4, collate_fn=encoder.processor.train_collate)
        module = RDEModule(encoder=encoder, use_ccd=use_ccd, tse_dim=16, optimizer=torch.optim.Adam)
        pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(module, loader)
        return module

    assert fit(use_ccd=False).global_step == 2
    with pytest.raises(ValueError, match="RDE needs an mmembed datamodule"):
        fit(use_ccd=True)


@pytest.mark.parametrize(("objective", "reduction", "expected"),
                         [("tal", None, "sum"), ("trl", None, "sum"), ("trl_s", None, "sum"), ("sdm", None, "mean"),
                          ("info_nce", None, "mean"), ("tal", "mean", "mean"), ("sdm", "sum", "sum")])
def test_reduction_defaults_to_the_references_per_objective(tiny_encoder, objective, reduction, expected):
    from mmembed.methods.rde import objective as obj
    from mmembed.methods.rde.module import RDEModule

    module = RDEModule(encoder=tiny_encoder(), objective=objective, reduction=reduction, use_tse=False, text_aug_p=0.0)
    assert module.reduction_mode() == expected
    torch.manual_seed(0)
    batch = {"image": torch.randn(4, 3, 32, 16), "text": module.encoder.tokenizer(["a red coat", "a blue bag",
                                                                                    "a hat", "green shoes"]),
             "label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}
    loss_b, loss_t, _ = module._losses(batch)
    torch.testing.assert_close(module.compute_loss(batch)["loss"], obj.reduce(loss_b + loss_t, mode=expected))


def test_similarities_and_losses_stay_fp32_under_autocast(tiny_encoder):
    from mmembed.methods.rde import objective as obj
    from mmembed.methods.rde.module import RDEModule

    module = RDEModule(encoder=tiny_encoder(), use_tse=False, text_aug_p=0.0)
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    module._dual_embeddings = lambda images, ids: (img, txt, None, None)  # fixed fp32 embeddings
    batch = {"image": None, "text": torch.zeros(6, 4, dtype=torch.long), "label": torch.arange(6) % 3}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_b, _, sim = module._losses(batch)
    assert sim.dtype == torch.float32
    torch.testing.assert_close(sim, txt @ img.T, rtol=0, atol=0)
    torch.testing.assert_close(loss_b, obj.tal(txt @ img.T, batch["label"], tau=0.015, margin=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (txt @ img.T).dtype == torch.bfloat16  # what the matmul would be without the guard


def test_released_rde_checkpoints_load_into_the_module(tiny_encoder, tmp_path):
    from mmembed.methods.rde.module import RDEModule

    source = RDEModule(encoder=tiny_encoder(), tse_dim=16)
    # the official layout, written out by hand: CLIP under base_model, the heads' own names, fp16 weights
    heads = {"tse.image_head.": ("visul_emb_layer.", "fc"), "tse.text_head.": ("texual_emb_layer.", "linear")}
    mlp = {"mlp.0": "mlp.layers.0", "mlp.1": "mlp.bns.0", "mlp.3": "mlp.layers.1"}
    official = {}
    for key, value in source.state_dict().items():
        if key.startswith("encoder.model."):
            official["base_model." + key[len("encoder.model."):]] = value.half()
            continue
        prefix = next(p for p in heads if key.startswith(p))
        name, fc = heads[prefix]
        rest = key[len(prefix):]
        part, leaf = rest.rsplit(".", 1)
        official[name + (fc if part == "fc" else mlp[part]) + "." + leaf] = value.half()
    official["visul_emb_layer.linear.weight"] = torch.zeros(16, 16)  # built but unused in the official code
    official["texual_emb_layer.mlp.bns.1.weight"] = torch.ones(16)
    torch.save({"model": official, "epoch": 60}, tmp_path / "best.pth")

    loaded = RDEModule(encoder=tiny_encoder(), tse_dim=16, released_checkpoint=str(tmp_path / "best.pth"))
    for key, value in source.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), msg=key)
    official["texual_emb_layer.extra.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="unexpected key"):
        RDEModule(encoder=tiny_encoder(), tse_dim=16, released_checkpoint=str(tmp_path / "odd.pth"))
