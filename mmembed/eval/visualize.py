"""Pictures of ranked retrieval results (matplotlib imported lazily, Agg backend)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from mmembed.types import load_image


@dataclass
class RankedExamples:
    """Queries with their ranked gallery items, ready to draw (:func:`plot_ranked_results`).

    Shapes:
        ranked: (Q, K) gallery positions; correct: (Q, K) bool.
    """

    query_texts: Sequence[str]
    gallery_paths: Sequence[str | Path]
    ranked: Tensor
    correct: Tensor
    title: str | None = None
    query_images: Sequence[str | Path] | None = None

    def plot(self, out_path: str | Path) -> Path:
        """Draw into ``out_path``; returns the path."""
        return plot_ranked_results(self.query_texts, self.gallery_paths, self.ranked, self.correct, out_path,
                                   title=self.title, query_images=self.query_images)


def plot_ranked_results(
    query_texts: Sequence[str],
    gallery_paths: Sequence[str | Path],
    ranked: Tensor,
    correct: Tensor,
    out_path: str | Path,
    title: str | None = None,
    query_images: Sequence[str | Path] | None = None,
) -> Path:
    """Draw each text query with its top-K gallery images; correct ones get a green frame.

    Args:
        query_texts: One caption per row.
        gallery_paths: Image of each ranked gallery entry, indexed by ``ranked``: a file, a PIL image or a
            reference with ``load()`` (a shard member).
        ranked: Gallery indices in rank order.
        correct: Whether each ranked image has the query's identity.
        out_path: PNG to write (parent folders are created).
        title: Optional figure title.
        query_images: Optional image of each query (composed retrieval: the reference), drawn
            after the text with a blue frame.

    Returns:
        The written path.

    Shapes:
        ranked: (Q, K); correct: (Q, K).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_q, k = ranked.shape
    extra = 1 if query_images is not None else 0
    fig, axes = plt.subplots(n_q, k + 1 + extra, figsize=(1.1 * (k + extra) + 3.2, 2.0 * n_q), squeeze=False,
                             gridspec_kw={"width_ratios": [3.0] + [1.0] * (k + extra)})
    for row in range(n_q):
        ax = axes[row][0]
        ax.axis("off")
        ax.text(0.0, 0.5, "\n".join(textwrap.wrap(query_texts[row], 34)[:7]), fontsize=7, va="center", ha="left",
                transform=ax.transAxes)
        if query_images is not None:
            ax = axes[row][1]
            ax.imshow(load_image(query_images[row]))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("#2166ac")
                spine.set_linewidth(3.0)
            if row == 0:
                ax.set_title("query", fontsize=7)
        for col in range(k):
            ax = axes[row][col + 1 + extra]
            ax.imshow(load_image(gallery_paths[int(ranked[row, col])]))
            ok = bool(correct[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if ok else "#d73027")
                spine.set_linewidth(3.0 if ok else 1.0)
            if row == 0:
                ax.set_title(f"#{col + 1}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
