"""Zero-shot composed image retrieval, Lightning-free: gallery features, composed-query scores and
each benchmark's metrics.

A composed query is the reference image's *raw* (unnormalised) embedding projected by ``phi`` into
one pseudo-word token, written into ``"a photo of $ that {text}"`` and encoded by the query-side
text encoder (the frozen CLIP one for a base method, the RTD-tuned one after RTD). FashionIQ queries
average the normalised embeddings of the captions' two orders. Scores are cosines against the
normalised gallery features of the frozen image encoder, so one gallery encoding serves every
query encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmembed.data.cir import PROMPT, CIRSplit, composed_prompt, fashioniq_prompts

__all__ = ["PROMPT", "CIREvaluator", "cir_metrics", "cir_summaries", "composed_prompt", "composed_scores", "encode_images",
           "fashioniq_prompts"]

Protocol = Literal["cirr", "circo", "fashioniq", "genecis"]

@torch.no_grad()
def encode_images(encoder: nn.Module, paths: Sequence, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> Tensor:
    """Raw (unnormalised) image embeddings of files, with the encoder's eval transform.

    Shapes:
        -> (N, D).
    """
    from mmembed.types import load_image

    transform = encoder.processor.eval_image_transform
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="encoding images", unit="batch")
    out = []
    for start in chunks:
        batch = torch.stack([transform(load_image(p)) for p in paths[start:start + batch_size]])
        out.append(encoder.encode_image(batch.to(device)).embedding.float())
    return torch.cat(out) if out else torch.zeros(0, encoder.embed_dim)


@torch.no_grad()
def composed_scores(
    split: CIRSplit,
    gallery: Tensor,
    phi: Callable[[Tensor], Tensor],
    text_encoder: nn.Module,
    protocol: Protocol = "cirr",
    template: str = PROMPT,
    batch_size: int = 256,
    fashioniq_orders: Literal["both", "first"] = "both",
) -> Tensor:
    """Cosine scores of every composed query of a split against its gallery.

    Args:
        split: Queries and gallery (:mod:`mmembed.data.cir`).
        gallery: Raw image embeddings of ``split.gallery_paths`` (:func:`encode_images`).
        phi: Maps raw image embeddings to pseudo tokens (in eval mode).
        text_encoder: Query-side encoder with ``tokenizer`` and ``encode_text(ids, pseudo_tokens=...)``.
        protocol: ``fashioniq`` averages the two caption orders; the others use one text.
        template: The prompt, with ``$`` for the pseudo word and ``{}`` for the text.
        batch_size: Queries per forward.
        fashioniq_orders: ``both`` caption orders (summed) or the ``first`` only (Pic2Word's protocol).

    Returns:
        Scores, rows in ``split.queries`` order.

    Shapes:
        gallery (G, D) -> (Q, G).
    """
    if gallery.shape[0] != len(split.gallery_names):
        raise ValueError(f"gallery has {gallery.shape[0]} embeddings for {len(split.gallery_names)} gallery images")
    g = F.normalize(gallery.float(), dim=-1)
    rows = []
    for start in range(0, len(split.queries), batch_size):
        queries = split.queries[start:start + batch_size]
        tokens = phi(gallery[[q.reference for q in queries]])  # (b, W) from the raw reference embedding
        if protocol == "fashioniq":
            pairs = [fashioniq_prompts(*q.texts, template=template) for q in queries]
            variants = [[p[0] for p in pairs], [p[1] for p in pairs]][: 2 if fashioniq_orders == "both" else 1]
        else:
            variants = [[composed_prompt(q.texts[0], template) for q in queries]]
        feats = [F.normalize(text_encoder.encode_text(text_encoder.tokenizer(v).to(gallery.device),
                                                      pseudo_tokens=tokens).embedding.float(), dim=-1)
                 for v in variants]
        q = F.normalize(torch.stack(feats).sum(0), dim=-1)  # FashionIQ: normalise(q1 + q2)
        rows.append(q @ g.T)
    return torch.cat(rows)


def cir_metrics(scores: Tensor, split: CIRSplit, protocol: Protocol = "cirr") -> dict[str, float]:
    """The benchmark's metrics in percent.

    * ``cirr``: R@1/5/10/50 with the reference removed, and ``subset_r1/2/3`` within ``members``;
    * ``circo``: mAP@5/10/25/50 over ``ground_truth``, and Recall@5/10/25/50 of the one target the
      caption was written for (CIRCO's evaluation script; the reference stays in the gallery);
    * ``fashioniq``: R@10/50 (reference kept in the gallery);
    * ``genecis``: R@1/2/3 within each query's own gallery (``members``).

    Raises:
        ValueError: If a query has no target (a hidden test split: write a submission instead).
    """
    from mmembed.metrics.cir import (
        circo_map,
        cirr_recall,
        cirr_subset_recall,
        recall_at_k,
    )

    if protocol == "circo":
        out = circo_map(scores, [q.ground_truth for q in split.queries])
        if all(q.target is not None for q in split.queries):  # CIRCO's Recall@K: the caption's own target only
            out |= recall_at_k(scores, [q.target for q in split.queries], (5, 10, 25, 50))
        return out
    missing = [q.id for q in split.queries if q.target is None]
    if missing:
        raise ValueError(f"{len(missing)} queries have no target (first: {missing[:5]}); this split's targets "
                         "are hidden: write a submission file (mmembed.eval.cir_submission) instead")
    target = [q.target for q in split.queries]
    reference = [q.reference for q in split.queries]
    if protocol == "cirr":
        out = cirr_recall(scores, target, reference, (1, 5, 10, 50))
        subset = cirr_subset_recall(scores, target, reference, [q.members for q in split.queries], (1, 2, 3))
        return out | {f"subset_{k}": v for k, v in subset.items()}
    if protocol == "genecis":
        return cirr_subset_recall(scores, target, reference, [q.members for q in split.queries], (1, 2, 3))
    if protocol == "fashioniq":  # the reference stays in the gallery: rank it like any other image
        return recall_at_k(scores, target, (10, 50))
    raise ValueError(f"protocol must be cirr, circo, fashioniq or genecis, got {protocol!r}")


def cir_summaries(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat ``{set}_{metric}`` values plus each benchmark's summary numbers: the FashionIQ and
    GeneCIS means over categories / tasks, ``fashioniq_avg`` = (R@10 + R@50) / 2 and
    ``cirr_avg`` = (R@5 + R_s@1) / 2."""
    out = {f"{name}_{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}
    for family in ("fashioniq", "genecis"):
        sets = [m for name, m in results.items() if name.startswith(family + "_")]
        for metric in sets[0] if sets else []:
            out[f"{family}_{metric}"] = sum(m[metric] for m in sets) / len(sets)
    if "fashioniq_r10" in out:
        out["fashioniq_avg"] = (out["fashioniq_r10"] + out["fashioniq_r50"]) / 2
    if "cirr" in results:
        out["cirr_avg"] = (results["cirr"]["r5"] + results["cirr"]["subset_r1"]) / 2
    return out


class CIREvaluator:
    """Composed image retrieval over one benchmark's query sets (the :class:`~mmembed.eval.base.Evaluator`
    interface): every set has its own gallery, scored with the set's protocol.

    ``update(name, side, index, embeddings)`` adds gallery embeddings (``side="gallery"``, raw) or
    normalised composed queries (``side="query"``) of a registered set; :meth:`compute` gathers
    across ranks, scores every complete set whose targets are known and returns
    :func:`cir_summaries`. Sets with hidden targets are left to :meth:`scores` (submission files).

    Shapes:
        gallery (G, D) raw embeddings; queries (Q, D); scores (Q, G).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sets: dict[str, dict[str, Any]] = {}

    def add_set(self, name: str, split: CIRSplit, protocol: Protocol, gallery_size: int) -> None:
        """Register a query set (once; later calls are ignored)."""
        if name not in self.sets:
            self.sets[name] = {"split": split, "protocol": protocol, "size": gallery_size,
                               "gallery": [], "queries": [], "G": None}

    def update(self, name: str, side: Literal["gallery", "query"], index: Tensor, embeddings: Tensor) -> None:
        if side not in ("gallery", "query"):
            raise ValueError(f"side must be 'gallery' or 'query', got {side!r}")
        self.sets[name][side if side == "gallery" else "queries"].append((index.detach().long(), embeddings.detach()))
        self.sets[name].pop("scores", None)

    def gallery(self, name: str, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The set's raw gallery embeddings, gathered once, and which rows were encoded (a partial
        run encodes only some). Rows filled in later (:meth:`fill_gallery`) stay. Shapes: (G, D), (G,)."""
        from mmembed.distributed import gather_for_eval

        state = self.sets[name]
        if state["G"] is None:
            parts = state["gallery"]
            dim = parts[0][1].shape[1] if parts else 0
            full = torch.zeros(state["size"], dim, device=device)
            have = torch.zeros(state["size"], dtype=torch.bool, device=device)
            if parts:
                index, emb = gather_for_eval(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
                full[index], have[index] = emb.float(), True
            state["G"], state["have"], state["complete"] = full, have, bool(have.all())
        return state["G"], state["have"]

    def fill_gallery(self, name: str, rows: list[int], embeddings: Tensor) -> None:
        """Rows of the gallery encoded on demand (references a partial run needed). Shapes: (R, D)."""
        full, have = self.gallery(name, embeddings.device)
        if full.shape[1] == 0:
            full = self.sets[name]["G"] = torch.zeros(full.shape[0], embeddings.shape[1], device=embeddings.device)
        full[rows], have[rows] = embeddings.float(), True
        self.sets[name].pop("scores", None)

    def scores(self, name: str) -> Tensor | None:
        """Cosine scores of the set's queries against its gallery, rows in query order; None for a
        partial run (not every query and gallery image encoded). Kept until the next update, so the
        metrics, the ranked pictures and the submission files share one gather and one product. Shapes: (Q, G)."""
        from mmembed.distributed import gather_for_eval

        state = self.sets[name]
        if "scores" in state:
            return state["scores"]
        if not state["queries"]:
            return None
        index, q = gather_for_eval(torch.cat([p[0] for p in state["queries"]]),
                                   torch.cat([p[1] for p in state["queries"]]))
        full, _ = self.gallery(name, q.device)
        complete = state["complete"] and index.numel() == len(state["split"].queries)
        state["scores"] = q.float() @ F.normalize(full, dim=-1).T if complete else None  # (Q, G)
        return state["scores"]

    def hidden(self, name: str) -> bool:
        """Whether the set's targets are hidden (CIRR test1, CIRCO test)."""
        return any(q.target is None and not q.ground_truth for q in self.sets[name]["split"].queries)

    def per_set(self) -> dict[str, dict[str, float]]:
        """Metrics of every complete set with known targets: ``{set: {metric: value}}``."""
        results = {}
        for name, state in self.sets.items():
            if self.hidden(name):
                continue
            scores = self.scores(name)
            if scores is not None:
                results[name] = cir_metrics(scores, state["split"], state["protocol"])
        return results

    def compute(self) -> dict[str, float]:
        return cir_summaries(self.per_set())
