"""Two CPU processes on gloo: distributed losses must match one process on the full batch.

The workers do what DDP does: identical tiny encoders on both ranks, each rank
encodes its half of the batch, ``loss.backward()``, then parameter gradients
(including the logit scale) are all-reduce averaged. The main process compares
the averaged loss and gradients with a single-process run on the concatenated
batch. Results travel back through ``torch.save`` files.
"""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmembed.distributed import (
    gather_for_eval,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from mmembed.losses import ClipLoss, InfoNCELoss, ProgressiveSoftClipLoss, info_nce

from gloo_ranks import run_ranks

WORLD, B, IN_IMG, IN_TXT, D = 2, 3, 5, 4, 3
DT = torch.float64
TOL = dict(rtol=1e-6, atol=1e-8)

# scenario name -> loss factory (the hard-negative variant adds B extra candidates per rank)
SCENARIOS = {
    "clip_local": lambda: ClipLoss(init_temperature=0.2, local_loss=True, check_sizes=True),
    "clip_global": lambda: ClipLoss(init_temperature=0.2, local_loss=False),
    "clip_nogather": lambda: ClipLoss(init_temperature=0.2, gather=False),
    "infonce": lambda: InfoNCELoss(init_temperature=0.25, learn_temperature=True),
    "infonce_hardneg": lambda: InfoNCELoss(init_temperature=0.25, learn_temperature=True),
    "soft_local": lambda: ProgressiveSoftClipLoss(init_temperature=0.2, alpha=0.3, local_loss=True),
    "soft_global": lambda: ProgressiveSoftClipLoss(init_temperature=0.2, alpha=0.3, mode="uniform", local_loss=False),
}


class Tower(nn.Module):
    """Tiny linear encoder followed by L2 normalisation."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x), dim=-1)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "img": torch.randn(WORLD * B, IN_IMG, generator=g, dtype=DT),
        "txt": torch.randn(WORLD * B, IN_TXT, generator=g, dtype=DT),
        "neg": torch.randn(WORLD * B, IN_TXT, generator=g, dtype=DT),
    }


def _build(name: str) -> nn.ModuleDict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # identical init on every rank and in the reference run
        parts = {"img": Tower(IN_IMG), "txt": Tower(IN_TXT), "loss": SCENARIOS[name]()}
    return nn.ModuleDict(parts).double()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _run_scenario(name: str, rank: int) -> dict:
    model, data = _build(name), _data()
    rows = slice(rank * B, (rank + 1) * B)
    query = model["img"](data["img"][rows])
    cand = model["txt"](data["txt"][rows])
    if name == "infonce_hardneg":
        cand = torch.cat([cand, model["txt"](data["neg"][rows])])  # (2B, D): positives first
    loss = model["loss"](query, cand)
    loss.backward()
    grads = _grads(model)
    for g in grads.values():  # what DDP does: average gradients over ranks
        dist.all_reduce(g)
        g /= WORLD
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": mean_loss / WORLD, "grads": grads}


def _worker(rank: int) -> dict:
    res: dict = {"env": (is_distributed(), get_rank(), get_world_size())}
    for name in SCENARIOS:
        res[name] = _run_scenario(name, rank)
    # plain gather values + gradient of a simple function
    x = torch.full((2, 3), float(rank + 1), dtype=DT, requires_grad=True)
    gathered = gather_with_grad(x)
    (gathered * torch.arange(1, 5, dtype=DT)[:, None]).sum().backward()
    res["gather"] = (gathered.detach(), x.grad.clone())
    # gather_for_eval: uneven local sizes, padded repeats (index 0 appears twice)
    idx = torch.tensor([4, 0, 2, 6, 8]) if rank == 0 else torch.tensor([1, 3, 0])
    emb = torch.stack([idx.to(DT), 10 * idx.to(DT)], dim=1)
    res["eval"] = gather_for_eval(idx, emb, 2 * idx)
    # check_sizes must raise on every rank instead of hanging
    try:
        gather_with_grad(torch.zeros(3 - rank, D, dtype=DT), check_sizes=True)
        res["check_sizes"] = None
    except ValueError as err:
        res["check_sizes"] = str(err)
    return res


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_ranks(_worker, WORLD, tmp_path_factory.mktemp("dist"))


def _single_process(name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, data = _build(name), _data()
    query, cand = model["img"](data["img"]), model["txt"](data["txt"])
    if name == "infonce_hardneg":
        # same columns as the ranks see them: [pos_0, neg_0, pos_1, neg_1]
        neg = model["txt"](data["neg"])
        cand = torch.cat([torch.cat([cand[r * B : (r + 1) * B], neg[r * B : (r + 1) * B]]) for r in range(WORLD)])
        targets = torch.cat([torch.arange(B) + r * 2 * B for r in range(WORLD)])
        loss = info_nce(query, cand, targets, model["loss"].logit_scale())
    else:
        loss = model["loss"](query, cand)  # not distributed here: plain loss on the full batch
    loss.backward()
    return loss.detach(), _grads(model)


def test_workers_saw_a_process_group(results):
    assert [r["env"] for r in results] == [(True, 0, WORLD), (True, 1, WORLD)]


@pytest.mark.parametrize("name", ["clip_local", "clip_global", "infonce", "infonce_hardneg", "soft_local",
                                  "soft_global"])
def test_loss_and_grads_match_single_process(results, name):
    ref_loss, ref_grads = _single_process(name)
    for res in results:
        torch.testing.assert_close(res[name]["loss"], ref_loss, **TOL)
        assert res[name]["grads"].keys() == ref_grads.keys()
        assert "loss.logit_scale.log_scale" in ref_grads
        for key, ref in ref_grads.items():
            assert ref.abs().max() > 0, key
            torch.testing.assert_close(res[name]["grads"][key], ref, **TOL, msg=key)


def test_without_gather_differs_from_single_process(results):
    """Sanity check that the comparison has teeth: local negatives only is a different loss."""
    ref_loss, ref_grads = _single_process("clip_nogather")
    got = results[0]["clip_nogather"]
    assert not torch.allclose(got["loss"], ref_loss, **TOL)
    assert not torch.allclose(got["grads"]["img.linear.weight"], ref_grads["img.linear.weight"], **TOL)


def test_gather_with_grad_values_and_backward(results):
    expected = torch.cat([torch.full((2, 3), 1.0, dtype=DT), torch.full((2, 3), 2.0, dtype=DT)])
    for rank, res in enumerate(results):
        gathered, grad = res["gather"]
        torch.testing.assert_close(gathered, expected)
        # every rank's loss puts weight (row index + 1) on the gathered rows; summed over 2 ranks
        rows = torch.arange(1, 5, dtype=DT)[rank * 2 : rank * 2 + 2]
        torch.testing.assert_close(grad, WORLD * rows[:, None].expand(2, 3))


def test_gather_for_eval_uneven_and_duplicated(results):
    expected_idx = torch.tensor([0, 1, 2, 3, 4, 6, 8])
    for res in results:
        idx, emb, labels = res["eval"]
        torch.testing.assert_close(idx, expected_idx)
        torch.testing.assert_close(emb, torch.stack([expected_idx.to(DT), 10 * expected_idx.to(DT)], dim=1))
        torch.testing.assert_close(labels, 2 * expected_idx)


def test_check_sizes_raises_on_every_rank(results):
    for res in results:
        assert res["check_sizes"] is not None
        assert "rank 0: (3, 3)" in res["check_sizes"] and "rank 1: (2, 3)" in res["check_sizes"]
        assert "drop_last" in res["check_sizes"]


# ------------------------------------------------------------- no process group
def test_helpers_without_process_group():
    assert (is_distributed(), get_rank(), get_world_size()) == (False, 0, 1)
    x = torch.randn(3, 2)
    assert gather_with_grad(x, check_sizes=True) is x


def test_gather_for_eval_without_process_group_sorts_and_dedupes():
    idx = torch.tensor([5, 2, 5, 0, 2])
    emb = torch.tensor([[5.0], [2.0], [5.0], [0.0], [2.0]])
    out_idx, out_emb = gather_for_eval(idx, emb)
    torch.testing.assert_close(out_idx, torch.tensor([0, 2, 5]))
    torch.testing.assert_close(out_emb, torch.tensor([[0.0], [2.0], [5.0]]))
    with pytest.raises(ValueError, match="1-D"):
        gather_for_eval(idx[:, None], emb)
    with pytest.raises(ValueError, match="rows"):
        gather_for_eval(idx, emb[:3])
