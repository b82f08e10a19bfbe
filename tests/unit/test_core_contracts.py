"""Core contracts: the encoder protocols, model-owned batching, no tokenizer ids outside the encoder,
and checkpoints that cannot run code on load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from mmembed.nn.encoders.base import Embedder, TokenEmbedder, require
from mmembed.types import Processor

PACKAGE = Path(__file__).resolve().parents[2] / "mmembed"
# the open_clip encoder owns CLIP BPE's numbers; nothing else in the package may spell them
ID_OWNERS = {PACKAGE / "nn" / "encoders" / "open_clip.py"}
CLIP_IDS = re.compile(r"(?<![\w.])(259|49404|49405|49406|49407|49408)(?![\w.])")


def test_no_tokenizer_id_literal_outside_the_encoder():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ID_OWNERS:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if CLIP_IDS.search(line):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert not offences, offences


def test_the_scan_finds_a_planted_literal(tmp_path):
    planted = "mask_id = 49405  # repurposed merge\nwidth = 512\n"
    assert [bool(CLIP_IDS.search(line)) for line in planted.splitlines()] == [True, False]
    assert not CLIP_IDS.search("x = 2594059")  # part of another number


def test_open_clip_encoder_satisfies_both_protocols(tiny_encoder):
    encoder = tiny_encoder()
    assert isinstance(encoder, Embedder) and isinstance(encoder, TokenEmbedder)
    assert require(encoder, TokenEmbedder, "test") is encoder
    ids = encoder.tokenizer(["a red bag", "a blue hat"])
    torch.testing.assert_close(encoder.encode({"text": ids}, "text"), encoder.encode_text(ids).embedding)
    with pytest.raises(ValueError, match="side"):
        encoder.encode({"text": ids}, "audio")
    special = encoder.special_tokens
    assert (ids[:, 0] == special.sot).all() and (ids == special.eot).any(1).all()
    assert special.mask == special.first_special and special.vocab_size == 49408
    added = encoder.add_mask_token()
    assert encoder.special_tokens.mask == added == special.vocab_size


def test_require_names_the_missing_protocol():
    with pytest.raises(TypeError, match="TokenEmbedder protocol"):
        require(torch.nn.Linear(2, 2), TokenEmbedder, "RDEModule")


def test_text_copy_has_no_image_tower_and_exports_with_the_frozen_one(tiny_encoder, tmp_path):
    encoder = tiny_encoder()
    copy = encoder.text_copy()
    assert not any(n.startswith("model.visual") for n, _ in copy.named_parameters())
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(1.0)
    weights, _ = encoder.export(tmp_path, stem="q", text_from=copy)
    state = torch.load(weights, weights_only=True)
    torch.testing.assert_close(state["token_embedding.weight"], copy.model.token_embedding.weight)
    torch.testing.assert_close(state["visual.conv1.weight"], encoder.model.visual.conv1.weight)


def test_collate_equals_per_item_processing(tiny_encoder, tmp_path):
    from PIL import Image

    processor: Processor = tiny_encoder().processor
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 32), (40 * i, 90, 200)).save(paths[-1])
    texts = ["a person in a red coat", "blue jeans and a hat", "a green bag"]
    items = [{"image": p, "text": t, "label": i, "index": i, "caption": t} for i, (p, t) in enumerate(zip(paths, texts))]
    batch = processor.collate(items)
    by_item = default_collate([
        {"image": processor.eval_image_transform(Image.open(p).convert("RGB")), "text": processor.tokenizer([t])[0],
         "label": i, "index": i} for i, (p, t) in enumerate(zip(paths, texts))])
    for key in ("image", "text", "label", "index"):
        torch.testing.assert_close(batch[key], by_item[key])
    assert batch["caption"] == texts  # strings outside text_keys stay strings (RTD's triplets)
    torch.manual_seed(0)
    augmented = processor.train_collate(items)["image"]
    torch.manual_seed(0)
    assert torch.equal(augmented, torch.stack([processor.train_image_transform(Image.open(p).convert("RGB"))
                                               for p in paths]))
    with pytest.raises(ValueError, match="empty"):
        processor.collate([])


def test_phi_checkpoint_with_a_pickle_payload_runs_nothing(tmp_path):
    from mmembed.nn.phi import Phi

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("evil.ckpt", "evil.pt"):
        path = tmp_path / name
        torch.save({"phi": {"config": {}, "state_dict": {}}, "hyper_parameters": Payload()}, path)
        with pytest.raises(ValueError, match="not loaded"):
            Phi.load(path)
        assert not marker.exists()
    # the payload is real: an unrestricted load would have run it
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_train_pass_dataloader_covers_the_split_once_with_either_transform(tmp_path, tiny_encoder):
    from mmembed.data.base import Records, RetrievalDataModule
    from PIL import Image

    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 32), (20 * i, 0, 0)).save(paths[-1])

    class Tiny(RetrievalDataModule):
        def build_train_dataset(self):
            return Records(image=paths, text=[f"caption {i}" for i in range(10)], label=list(range(10)))

    processor = tiny_encoder().processor
    dm = Tiny(batch_size=4, processor=processor)
    assert len(dm.train_dataloader()) == 2  # the trainer's loader drops the last partial batch
    seen = torch.cat([b["index"] for b in dm.train_pass_dataloader(3, augment=False)])
    assert sorted(seen.tolist()) == list(range(10))  # every sample once, no drop_last
    first = next(iter(dm.train_pass_dataloader(10, augment=False, shuffle=False)))
    expected = torch.stack([processor.eval_image_transform(Image.open(p).convert("RGB")) for p in paths])
    torch.testing.assert_close(first["image"], expected)  # eval transforms, in order
    assert dm.train_pass_dataloader(4).dataset is dm.train_dataset()  # the trainer's dataset, built once
    shards = [torch.cat([b["index"] for b in dm.train_pass_dataloader(2, rank=r, world_size=2)]) for r in (0, 1)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())  # disjoint shards that cover the split
    assert sorted(shards[0].tolist() + shards[1].tolist()) == list(range(10))


def test_collate_stacks_numpy_values_and_refuses_missing_ones(tiny_encoder):
    import numpy as np

    processor = tiny_encoder().processor
    batch = processor.collate([{"label": np.int64(3), "flag": np.bool_(True), "score": 0.5},
                               {"label": np.int64(4), "flag": np.bool_(False), "score": 1.5}])
    assert batch["label"].tolist() == [3, 4] and batch["flag"].tolist() == [True, False]
    assert batch["score"].dtype == torch.float64  # as default_collate makes Python floats
    with pytest.raises(ValueError, match=r"items \[1\] have no value \(None\) for 'label'"):
        processor.collate([{"label": 1}, {"label": None}])
    with pytest.raises(ValueError, match="must share their keys"):
        processor.collate([{"label": 1}, {"label": 2, "extra": 3}])
