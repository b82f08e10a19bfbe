"""Zero-shot classification for any CLIP-like model: class names x prompt templates -> a text
classifier; images are assigned to the class whose classifier column they match best.

Only a text-encoding callable and image features are needed, so this works for an open_clip
model (``model.encode_text``), an :class:`~mmembed.nn.encoders.open_clip.OpenCLIPDualEncoder`
(``lambda ids: enc.encode_text(ids).embedding``) or a Lightning module alike.

References:
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
    (CLIP), ICML 2021, Sec. 3.1.4 (prompt ensembling: mean of normalised template embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["zeroshot_accuracy", "zeroshot_classifier"]


@torch.no_grad()
def zeroshot_classifier(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str | None = None,
) -> Tensor:
    """Build the prompt-ensembled text classifier.

    For each class, every template is filled with the class name (``template.format(c)``,
    e.g. ``"a photo of a {}."``), encoded and L2-normalised; the class column is the
    normalised mean of those embeddings.

    Args:
        encode_text: Token ids -> text embeddings (not necessarily normalised).
        tokenizer: Strings -> token ids.
        classnames: One name per class, in label order.
        templates: Prompt templates with one ``{}`` slot.
        device: Where token ids are sent (default: CPU).

    Returns:
        Classifier with unit-norm columns (float32).

    Raises:
        ValueError: If there are no classes or templates, or a template has no ``{}`` slot.

    Shapes:
        -> (D, C).
    """
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates need a '{{}}' slot for the class name: {bad[:3]}")
    columns = []
    for name in classnames:
        ids = tokenizer([t.format(name) for t in templates])
        if device is not None:
            ids = ids.to(device)
        emb = F.normalize(encode_text(ids).float(), dim=-1)  # (T, D)
        columns.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(columns, dim=1)  # (D, C)


def zeroshot_accuracy(
    image_features: Tensor, classifier: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy of zero-shot predictions, in percent.

    Logits are cosine similarities (image features are L2-normalised here). A sample counts
    as correct at k when its label is among the k highest logits (``torch.topk``; on exact
    ties the order of ``topk`` decides).

    Args:
        image_features: Image embeddings (normalised or not).
        classifier: Output of :func:`zeroshot_classifier`.
        labels: True class per image.
        ks: Cut-offs; each must be at most the number of classes.

    Returns:
        ``{"top1": ..., "top5": ...}`` (one key per k), percentages.

    Shapes:
        image_features: (N, D); classifier: (D, C); labels: (N,).
    """
    n_classes = classifier.shape[1]
    if any(k < 1 or k > n_classes for k in ks):
        raise ValueError(f"every k must be in [1, {n_classes}] (the number of classes), got {tuple(ks)}")
    if image_features.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_features.shape[0]} images but {labels.shape[0]} labels")
    logits = F.normalize(image_features.float(), dim=-1) @ classifier.to(image_features.device).float()  # (N, C)
    top = logits.topk(max(ks), dim=1).indices  # (N, K)
    hit = top == labels.to(top.device)[:, None]  # (N, K)
    return {f"top{k}": 100.0 * float(hit[:, :k].any(1).float().mean()) for k in ks}
