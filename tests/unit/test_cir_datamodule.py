"""CIR datamodules: caption files in every format, LinCIR's masked items, RTD's triplets (held-out
combinations and paraphrases never leak into training), query/gallery loader pairs."""

from __future__ import annotations

import json

import pytest
import torch

from mmembed.data.cir_datamodule import (
    CIRDataModule,
    read_caption_records,
    read_captions,
)
from mmembed.data.errors import DatasetFormatError
from mmembed.data.synthetic.cir import EDIT_TEMPLATES
from mmembed.methods.lincir.data import CaptionDataModule
from mmembed.methods.lincir.module import LinCIR
from mmembed.methods.rtd.data import TripletDataModule
from mmembed.methods.rtd.triplets import TextTriplet, save_triplets


@pytest.fixture
def world(synth_cir_world):
    return synth_cir_world


def test_read_captions_in_every_format(tmp_path, world):
    (tmp_path / "a.txt").write_text("a red car\n\n  a dog on grass \n")
    (tmp_path / "b.json").write_text(json.dumps(["one", {"caption": "two"}]))
    (tmp_path / "c.jsonl").write_text('{"text": "three"}\n{"text": "four"}\n')
    (tmp_path / "d.csv").write_text("id,caption\n1,five\n")
    assert read_captions(f"{tmp_path}/a.txt, {tmp_path}/b.json") == ["a red car", "a dog on grass", "one", "two"]
    assert read_captions(str(tmp_path / "c.jsonl"), text_col="text") == ["three", "four"]
    assert read_captions(str(tmp_path / "d.csv")) == ["five"]
    synth = json.loads((world / "synth_captions.json").read_text())
    seen = [v["caption"] for v in synth.values() if not v["held_out"]]
    assert read_captions(str(world / "synth_captions.json")) == seen
    assert len(read_captions(str(world / "synth_captions.json"), exclude_held_out=False)) == len(synth) > len(seen)
    records = read_caption_records(f"{world / 'synth_captions.json'},{tmp_path / 'a.txt'}")
    assert records[-2:] == [("a red car", False), ("a dog on grass", False)]
    assert [c for c, held in records if held] == [v["caption"] for v in synth.values() if v["held_out"]]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_captions(str(tmp_path / "missing.txt"))
    with pytest.raises(DatasetFormatError, match="text_col"):
        read_captions(str(tmp_path / "c.jsonl"))
    (tmp_path / "e.parquet").write_text("")
    with pytest.raises(DatasetFormatError, match="unsupported"):
        read_captions(str(tmp_path / "e.parquet"))


def test_lincir_items_pair_a_caption_with_its_masked_copy(tmp_path, tiny_encoder):
    long = "a " + " ".join(["very"] * 40) + " red car"  # every keyword past the 12-token context
    (tmp_path / "c.txt").write_text(f"a red car on the road\n{long}\n")
    encoder = tiny_encoder()
    pseudo, tokenizer = encoder.special_tokens.pseudo, encoder.tokenizer
    data = CaptionDataModule(captions=str(tmp_path / "c.txt"), batch_size=2, processor=encoder.processor)
    loader = data.train_dataloader()
    assert loader.dataset[0] == {"text": "a red car on the road", "masked": "$ on $", "index": 0}  # raw strings
    batch = next(iter(loader))
    assert batch["text"].shape == batch["masked"].shape == (2, 12)
    assert not (batch["text"] == pseudo).any()
    first = 0 if batch["index"][0] == 0 else 1
    assert torch.equal(batch["masked"][first], tokenizer(["$ on $"])[0])
    assert not (batch["masked"][1 - first] == pseudo).any()  # every $ of the long one fell past the context
    with pytest.warns(UserWarning, match="no pretrained weights"):  # the tiny CLIP is a random init
        module = LinCIR(encoder)
    masked = module._with_placeholder(batch["masked"])
    assert (masked == pseudo).any(dim=1).all()  # the long one falls back to "a photo of $"
    assert torch.equal(masked[1 - first], tokenizer(["a photo of $"])[0])
    assert torch.equal(masked[first], batch["masked"][first])


def test_rule_triplets_on_synth_cir_stay_among_seen_combinations_and_paraphrases(world, tiny_encoder):
    data = TripletDataModule(captions=str(world / "synth_captions.json"), vocabulary="synth_cir", per_caption=4,
                             processor=tiny_encoder().processor)
    triplets = data.triplets()
    synth = json.loads((world / "synth_captions.json").read_text())
    held = {v["caption"] for v in synth.values() if v["held_out"]}
    seen = {v["caption"] for v in synth.values() if not v["held_out"]}
    assert len(triplets) > 500
    assert all(t.reference in seen and t.target not in held for t in triplets)
    assert sum(t.target in seen for t in triplets) == len(triplets)  # a swap lands on another seen caption
    held_paraphrases = {tpl.split("{")[0].strip() for tpl in (v[-1] for v in EDIT_TEMPLATES.values())}
    assert not any(t.conditioning.startswith(p) for t in triplets for p in held_paraphrases if p)
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch["reference"], list) and len(batch["conditioning"]) == data.batch_size
    assert batch["index"].dtype == torch.long


def test_triplets_from_official_files_and_errors(tmp_path, tiny_encoder):
    path = save_triplets([TextTriplet("a red car", "make it blue", "a blue car")] * 3, tmp_path / "t.json")
    data = TripletDataModule(triplets=str(path), batch_size=2, processor=tiny_encoder().processor)
    assert data.triplets()[0] == TextTriplet("a red car", "make it blue", "a blue car")
    with pytest.raises(ValueError, match="triplets"):
        TripletDataModule()
    (tmp_path / "c.txt").write_text("a dog on grass\n")
    with pytest.raises(FileNotFoundError, match="vocabulary"):
        TripletDataModule(captions=str(tmp_path / "c.txt"), vocabulary="nope.json").triplets()
    with pytest.raises(DatasetFormatError, match="no triplets"):
        TripletDataModule(captions=str(tmp_path / "c.txt"), vocabulary="synth_cir").triplets()


def test_eval_loaders_come_in_gallery_query_pairs(world, tiny_encoder):
    encoder = tiny_encoder()
    data = CIRDataModule(root=str(world), eval_batch_size=500, processor=encoder.processor)
    gallery, queries = data.val_dataloader()
    assert queries.dataset.gallery is gallery.dataset and gallery.dataset.name == "cirr"
    g, q = next(iter(gallery)), next(iter(queries))
    assert g["image"].shape == (360, 3, 32, 16)
    assert q["text"].shape[0] == len(queries.dataset.split.queries) and "text2" not in q
    assert (q["text"] == encoder.special_tokens.pseudo).any(dim=1).all()
    with pytest.raises(ValueError, match="prompt"):
        CIRDataModule(prompt="a photo of {}")


def test_lincir_cuts_long_captions_to_75_tokens_before_masking(tmp_path, tiny_encoder):
    from mmembed.methods.lincir.data import TokenBudget

    long = "a red car " + " ".join(["very"] * 100) + " blue bus"  # 105 BPE tokens
    (tmp_path / "c.txt").write_text(f"a red car on the road\n{long}\n")
    encoder = tiny_encoder()
    tokenizer = encoder.processor.tokenizer
    data = CaptionDataModule(captions=str(tmp_path / "c.txt"), batch_size=2, processor=encoder.processor)
    items = data.train_dataloader().dataset
    assert items[0]["masked"] == "$ on $"  # within the budget: unchanged
    cut = TokenBudget(tokenizer, 75)(long)
    assert len(tokenizer.encode(cut)) == 75 and "bus" not in cut and cut.startswith("a red car very")
    assert items[1]["masked"].startswith("$ very") and "bus" not in items[1]["masked"]  # masked after the cut
    assert items[1]["text"] == long  # the target caption itself is tokenised (and cut) by the model
    whole = CaptionDataModule(captions=str(tmp_path / "c.txt"), batch_size=2, processor=encoder.processor,
                              max_tokens=None)
    assert whole.train_dataloader().dataset[1]["masked"].endswith("$")  # "blue bus" masked: no cut
    with pytest.raises(TypeError, match="encode/decode"):
        TokenBudget(lambda texts: None, 75)
