"""LinCIR and RTD under Lightning: validation equals the Lightning-free scoring, frozen modules stay
frozen and in eval mode, only the trainable part moves, the exports load, hidden targets give
submission files."""

from __future__ import annotations

import json
import shutil
import warnings

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from mmembed.data.cir import read_circo, read_cirr, read_fashioniq, read_genecis
from mmembed.data.cir_datamodule import CIRDataModule
from mmembed.eval.cir import cir_metrics, composed_scores, encode_images
from mmembed.methods.lincir.data import CaptionDataModule
from mmembed.methods.lincir.module import LinCIR
from mmembed.methods.rtd.data import TripletDataModule
from mmembed.methods.rtd.module import RTD
from mmembed.nn.encoders.open_clip import OpenCLIPDualEncoder
from mmembed.nn.phi import Phi


@pytest.fixture
def world(synth_cir_world):
    return synth_cir_world


def _trainer(**kw) -> pl.Trainer:
    defaults = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "num_sanity_val_steps": 0}
    return pl.Trainer(**{**defaults, **kw})


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _phi_file(encoder, path) -> str:
    torch.manual_seed(3)
    return str(Phi(encoder.embed_dim, encoder.text_width).save(path))


def test_validation_equals_the_lightning_free_scores(world, tiny_encoder):
    encoder = tiny_encoder()
    torch.manual_seed(1)
    module = LinCIR(encoder)
    data = CaptionDataModule(captions=str(world / "synth_captions.json"), root=str(world), eval_batch_size=50,
                             processor=encoder.processor)
    got = _trainer().validate(module, data, verbose=False)[0]
    split = read_cirr(world, "val")
    gallery = encode_images(encoder.eval(), split.gallery_paths, progress=False)
    want = cir_metrics(composed_scores(split, gallery, module.phi.eval(), encoder), split, "cirr")
    for key, value in want.items():
        assert got[f"val/cirr_{key}"] == pytest.approx(value, abs=1e-3), key
    assert got["val/cirr_avg"] == pytest.approx((want["r5"] + want["subset_r1"]) / 2, abs=1e-3)


def _fashioniq(world, root):
    """A FashionIQ-layout folder with two categories, built from SynthCIR renders."""
    names = sorted(p.stem for p in (world / "img").iterdir())
    (root / "images").mkdir(parents=True)
    for category, chosen in (("dress", names[:12]), ("shirt", names[40:52])):
        for n in chosen:
            Image.open(world / "img" / f"{n}.png").convert("RGB").save(root / "images" / f"{n}.jpg")
        (root / "image_splits").mkdir(exist_ok=True)
        (root / "captions").mkdir(exist_ok=True)
        (root / "image_splits" / f"split.{category}.val.json").write_text(json.dumps(chosen))
        queries = [{"candidate": chosen[i], "target": chosen[(i * 5 + 3) % 12], "captions": ["is red.", "has a dot?"]}
                   for i in range(6)]
        (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(queries))


@pytest.mark.parametrize("orders", ["both", "first"])
def test_fashioniq_validation_averages_orders_and_categories(world, tiny_encoder, tmp_path, orders):
    _fashioniq(world, tmp_path / "fiq")
    encoder = tiny_encoder()
    torch.manual_seed(1)
    module = LinCIR(encoder)
    data = CIRDataModule(benchmark="fashioniq", root=str(tmp_path / "fiq"), categories=("dress", "shirt"),
                         eval_batch_size=5, processor=encoder.processor, fashioniq_orders=orders)
    got = _trainer().validate(module, data, verbose=False)[0]
    per = {}
    for category in ("dress", "shirt"):
        split = read_fashioniq(tmp_path / "fiq", category)
        gallery = encode_images(encoder.eval(), split.gallery_paths, progress=False)
        scores = composed_scores(split, gallery, module.phi.eval(), encoder, protocol="fashioniq",
                                 fashioniq_orders=orders)
        if orders == "first":  # Pic2Word's protocol: one query text per query, "{c1} and {c2}"
            other = composed_scores(split, gallery, module.phi.eval(), encoder, protocol="fashioniq")
            assert not torch.allclose(scores, other)
        per[category] = cir_metrics(scores, split, "fashioniq")
        for key, value in per[category].items():
            assert got[f"val/fashioniq_{category}_{key}"] == pytest.approx(value, abs=1e-3)
    mean10 = (per["dress"]["r10"] + per["shirt"]["r10"]) / 2
    mean50 = (per["dress"]["r50"] + per["shirt"]["r50"]) / 2
    assert got["val/fashioniq_r10"] == pytest.approx(mean10, abs=1e-3)
    assert got["val/fashioniq_avg"] == pytest.approx((mean10 + mean50) / 2, abs=1e-3)


def _coco_like(world, folder, count):
    """The first ``count`` SynthCIR renders saved as COCO-style numbered JPEGs; returns their ids."""
    folder.mkdir(parents=True)
    names = sorted(p.stem for p in (world / "img").iterdir())[:count]
    for i, n in enumerate(names, start=1):
        Image.open(world / "img" / f"{n}.png").convert("RGB").save(folder / f"{i:012d}.jpg")
    return list(range(1, count + 1))


def test_circo_and_genecis_validation_match_the_lightning_free_scores(world, tiny_encoder, tmp_path):
    circo = tmp_path / "circo"
    ids = _coco_like(world, circo / "COCO2017_unlabeled" / "unlabeled2017", 30)
    (circo / "annotations").mkdir()
    (circo / "COCO2017_unlabeled" / "annotations").mkdir()
    info = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}
    (circo / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))
    queries = [{"id": q, "reference_img_id": ids[q], "target_img_id": ids[q + 7], "relative_caption": "is blue",
                "shared_concept": "a shape", "gt_img_ids": [ids[q + 7], ids[(3 * q) % 30], ids[q + 11]]}
               for q in range(9)]
    (circo / "annotations" / "val.json").write_text(json.dumps(queries))
    genecis = tmp_path / "genecis"
    ids = _coco_like(world, genecis / "val2017", 20)
    task = [{"condition": "red", "reference": {"val_image_id": ids[q]}, "target": {"val_image_id": ids[q + 1]},
             "gallery": [{"val_image_id": ids[(q + k) % 20]} for k in (3, 5, 8, 13)]} for q in range(10)]
    (genecis / "focus_object.json").write_text(json.dumps(task))
    vg = tmp_path / "vg"  # Visual Genome-style images named by id, regions given by bounding boxes
    vg_ids = _coco_like(world, vg, 12)
    for i in vg_ids:
        (vg / f"{i:012d}.jpg").rename(vg / f"{i}.jpg")

    def region(i: int) -> dict:
        return {"image_id": vg_ids[i % 12], "instance_bbox": [2 + i % 5, 3, 12 + i % 7, 10]}

    attribute = [{"condition": "blue", "reference": region(q), "target": region(q + 20),
                  "gallery": [region(q + k) for k in (30, 41, 52)]} for q in range(8)]
    attribute.append({"condition": "red", "reference": region(1), "target": region(2), "gallery": [region(3)]})
    (genecis / "focus_attribute.json").write_text(json.dumps(attribute))
    encoder = tiny_encoder()
    torch.manual_seed(1)
    module = LinCIR(encoder)
    setups = [("circo", circo, {}, read_circo(circo, "val"), "circo_"),
              ("genecis", genecis, {"categories": ("focus_object",), "image_root": str(genecis / "val2017")},
               read_genecis(genecis / "focus_object.json", genecis / "val2017"), "genecis_focus_object_"),
              ("genecis", genecis, {"categories": ("focus_attribute",), "attribute_image_root": str(vg)},
               read_genecis(genecis / "focus_attribute.json", vg), "genecis_focus_attribute_")]
    for benchmark, root, extra, split, prefix in setups:
        data = CIRDataModule(benchmark=benchmark, root=str(root), eval_batch_size=7, processor=encoder.processor,
                             **extra)
        got = _trainer().validate(module, data, verbose=False)[0]
        gallery = encode_images(encoder.eval(), split.gallery_paths, progress=False)
        want = cir_metrics(composed_scores(split, gallery, module.phi.eval(), encoder), split, benchmark)
        assert want and set(want) <= {k.split("/")[-1].removeprefix(prefix) for k in got}
        for key, value in want.items():
            assert got[f"val/{prefix}{key}"] == pytest.approx(value, abs=1e-3), (benchmark, key)
        if benchmark == "genecis":
            assert got["val/genecis_r1"] == got[f"val/{prefix}r1"]  # the mean over one task
    assert len(read_genecis(genecis / "focus_attribute.json", vg).queries) == 8  # the odd-length gallery is dropped


class _Modes(pl.Callback):
    """Records the train/eval mode of each part at every backward pass."""

    def __init__(self) -> None:
        self.seen: list[dict[str, bool]] = []

    def on_before_backward(self, trainer, module, loss) -> None:
        parts = {"encoder": module.encoder, "phi": module.phi, "query": getattr(module, "query_encoder", None)}
        modes = {k: m.training for k, m in parts.items() if m is not None}
        modes["phi_dropout"] = any(d.training for d in module.phi.modules() if isinstance(d, torch.nn.Dropout))
        self.seen.append(modes)


def test_lincir_trains_phi_only_with_clip_frozen_in_eval_mode(world, tiny_encoder, tmp_path):
    encoder = tiny_encoder()
    module = LinCIR(encoder, noise_relative=True, noise_scale=0.5)
    before_clip, before_phi = _state(module.encoder), _state(module.phi)
    data = CaptionDataModule(captions=str(world / "synth_captions.json"), root=str(world), batch_size=16,
                             eval_batch_size=120, processor=encoder.processor)
    probe = _Modes()
    _trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[probe],
             default_root_dir=str(tmp_path)).fit(module, data)
    assert len(probe.seen) == 4
    assert all(s["encoder"] is False and s["phi"] is True and s["phi_dropout"] for s in probe.seen)
    assert _same(before_clip, _state(module.encoder))
    assert not _same(before_phi, _state(module.phi))
    assert _same(_state(module.phi), _state(Phi.load(tmp_path / "phi.pt")))  # written after fit
    trainer = module.trainer
    trainer.save_checkpoint(tmp_path / "python_built.ckpt")  # a module built in Python: its hparams hold classes
    assert _same(_state(module.phi), _state(Phi.load(tmp_path / "python_built.ckpt")))  # read weights-only


def test_rtd_moves_only_the_query_tower_and_keeps_frozen_parts_in_eval_mode(world, tiny_encoder, tmp_path):
    encoder = tiny_encoder()
    module = RTD(encoder, phi_checkpoint=_phi_file(encoder, tmp_path / "phi.pt"))
    frozen, phi = _state(module.encoder), _state(module.phi)
    query = _state(module.query_encoder)
    assert not any(k.startswith("model.visual.") and v.numel() for k, v in query.items())  # no image tower copy
    data = TripletDataModule(captions=str(world / "synth_captions.json"), vocabulary="synth_cir", root=str(world),
                             batch_size=16, eval_batch_size=120, processor=encoder.processor)
    probe = _Modes()
    trainer = _trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[probe],
                       default_root_dir=str(tmp_path))
    trainer.fit(module, data)
    assert len(probe.seen) == 4  # the steps after validation too
    assert all(s == {"encoder": False, "phi": False, "query": True, "phi_dropout": False} for s in probe.seen)
    assert _same(frozen, _state(module.encoder))  # image tower and anchor text tower
    assert _same(phi, _state(module.phi))
    assert not _same(query, _state(module.query_encoder))
    assert "val/cirr_r1" in trainer.callback_metrics

    # the export: plain open_clip with the tuned text tower and the original image tower
    import open_clip

    config = json.loads((tmp_path / "open_clip_query_config.json").read_text())
    (tmp_path / "rtd_query_export.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "rtd_query_export.json")
    model = open_clip.create_model("rtd_query_export", pretrained=str(tmp_path / "open_clip_query_model.pt")).eval()
    text = encoder.tokenizer(["a photo of a red circle", "a blue square"])
    images = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(text), module.query_encoder.eval().encode_text(text).embedding)
        torch.testing.assert_close(model.encode_image(images), module.encoder.encode_image(images).embedding)
    assert _same(phi, _state(Phi.load(tmp_path / "phi.pt")))


def test_rtd_needs_a_matching_phi(tiny_encoder, tmp_path):
    encoder = tiny_encoder()
    with pytest.raises(ValueError, match="phi_checkpoint"):
        RTD(encoder)
    with pytest.raises(FileNotFoundError, match="phi.pt"):
        RTD(encoder, phi_checkpoint=str(tmp_path / "missing.pt"))
    wrong = str(Phi(encoder.embed_dim + 1, encoder.text_width).save(tmp_path / "wrong.pt"))
    with pytest.raises(ValueError, match="another CLIP"):
        RTD(encoder, phi_checkpoint=wrong)


def test_phi_loads_from_a_lincir_lightning_checkpoint(tiny_encoder, tmp_path):
    module = LinCIR(tiny_encoder())
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert _same(_state(module.phi), _state(Phi.load(tmp_path / "last.ckpt")))


def test_hidden_test_targets_write_submission_files(world, tiny_encoder, tmp_path):
    root = tmp_path / "cirr"
    shutil.copytree(world, root)
    records = json.loads((root / "captions" / "cap.rc2.test1.json").read_text())
    for r in records:
        r.pop("target_hard")
    (root / "captions" / "cap.rc2.test1.json").write_text(json.dumps(records))
    encoder = tiny_encoder()
    data = CIRDataModule(root=str(root), eval_batch_size=200, processor=encoder.processor)
    result = _trainer(default_root_dir=str(tmp_path)).test(LinCIR(encoder), data, verbose=False)
    assert result == [{}] or not any(k.startswith("test/cirr") for k in result[0])
    recall = json.loads((tmp_path / "submission_cirr_recall.json").read_text())
    subset = json.loads((tmp_path / "submission_cirr_recall_subset.json").read_text())
    assert recall["version"] == "rc2" and subset["metric"] == "recall_subset"
    assert len(recall) - 2 == len(records)


def test_evaluation_only_datamodule_refuses_to_train(tiny_encoder):
    data = CIRDataModule(root="x", processor=tiny_encoder().processor)
    with pytest.raises(ValueError, match="CaptionDataModule"):
        data.train_dataloader()
    with pytest.raises(ValueError, match="root"):
        CIRDataModule(processor=tiny_encoder().processor).val_dataloader()


def test_a_partial_run_encodes_missing_references_and_reports_nothing(world, tiny_encoder):
    encoder = tiny_encoder()
    data = CIRDataModule(root=str(world), eval_batch_size=20, processor=encoder.processor)
    module = LinCIR(encoder)
    seen: list[int] = []
    original = module.evaluation_step

    def spy(batch, dataloader_idx):
        seen.append(dataloader_idx)
        original(batch, dataloader_idx)

    module.evaluation_step = spy
    sizes: list[int] = []
    encode = module.encoder.encode  # every image the module encodes goes through the Embedder call
    module.encoder.encode = lambda batch, side: sizes.append(batch[side].shape[0]) or encode(batch, side)
    result = _trainer(limit_val_batches=1).validate(module, data, verbose=False)
    assert seen == [0, 1]  # one gallery batch (20 of 360 images), then one query batch
    split = read_cirr(world, "val")
    outside = {q.reference for q in split.queries[:20]} - set(range(20))  # references of the one query batch
    assert sizes == [20, len(outside)] and outside  # the gallery batch, then only the missing references
    assert not any(k.startswith("val/cirr") for k in result[0])  # a partial gallery gives no benchmark numbers


def test_a_randomly_initialised_clip_is_flagged(tiny_encoder, tmp_path):
    with pytest.warns(UserWarning, match="no pretrained weights"):
        LinCIR(tiny_encoder())
    encoder = tiny_encoder()
    torch.save(encoder.model.state_dict(), tmp_path / "clip.pt")
    loaded = OpenCLIPDualEncoder(model_config=encoder.config, pretrained=str(tmp_path / "clip.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        LinCIR(loaded)
