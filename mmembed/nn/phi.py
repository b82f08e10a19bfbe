"""The projection phi of projection-based zero-shot CIR: an embedding in, one pseudo-word token out.

Shared by the projection methods (LinCIR trains it) and by what builds on them (RTD loads it).

LinCIR trains phi on *text* embeddings only: the caption embedding ``e`` plus scaled Gaussian
noise goes in, and the caption with its keywords replaced by phi's token must encode back to
``e`` (MSE). At test time phi takes the *image* embedding; the noise is what bridges the
modality gap. phi is saved on its own (``Phi.save`` / ``Phi.load``), apart from the frozen CLIP.

References:
    Gu et al., "Language-only Training of Zero-shot Composed Image Retrieval" (LinCIR), CVPR 2024,
    https://arxiv.org/abs/2312.01998; the MLP is SEARLE's (Baldrati et al., ICCV 2023). Saito et
    al., "Pic2Word", CVPR 2023 (the ``pic2word`` mapping network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["Phi", "noise_std", "noisy_embeddings"]


class Phi(nn.Module):
    """The projection MLP.

    ``arch="lincir"`` (LinCIR and SEARLE): ``Linear(D, h) -> GELU -> Dropout -> Linear(h, h) -> GELU
    -> Dropout -> Linear(h, W)``. ``arch="pic2word"``: ``[Linear -> Dropout -> ReLU] x 2 ->
    Linear(h, W)``, Pic2Word's mapping network.

    Args:
        input_dim: Embedding dimension D (the CLIP joint space).
        output_dim: Token width W of the text tower's input embedding.
        hidden_dim: Hidden width (None: ``4 * input_dim`` for ``lincir``, 512 for ``pic2word``).
        dropout: Dropout after each hidden layer (None: 0.5 for ``lincir``, 0.1 for ``pic2word``).
        arch: ``lincir`` or ``pic2word``.

    Shapes:
        embeddings (B, D) -> pseudo tokens (B, W).
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None, dropout: float | None = None,
                 arch: Literal["lincir", "pic2word"] = "lincir") -> None:
        super().__init__()
        if arch not in ("lincir", "pic2word"):
            raise ValueError(f"arch must be 'lincir' or 'pic2word', got {arch!r}")
        lincir = arch == "lincir"
        hidden = hidden_dim or (4 * input_dim if lincir else 512)
        dropout = (0.5 if lincir else 0.1) if dropout is None else dropout
        self.config = {"input_dim": input_dim, "output_dim": output_dim, "hidden_dim": hidden, "dropout": dropout,
                       "arch": arch}
        if lincir:
            layers = [nn.Linear(input_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                      nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
        else:
            layers = [nn.Linear(input_dim, hidden), nn.Dropout(dropout), nn.ReLU(),
                      nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(hidden, output_dim))

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(embeddings)

    def checkpoint(self, **metadata: Any) -> dict[str, Any]:
        """phi's checkpoint: ``{"config", "state_dict", "metadata"}`` (CPU tensors), as :meth:`load` reads it."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"config": self.config, "state_dict": state, "metadata": metadata}

    def save(self, path: str | Path, **metadata: Any) -> Path:
        """Write :meth:`checkpoint` to ``path`` (a phi checkpoint of its own)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(**metadata), path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Phi:
        """Rebuild phi from a file written by :meth:`save` (weights only, loaded strictly), from a
        Lightning checkpoint (``.ckpt``) of the LinCIR module, which stores phi under ``"phi"``, or from
        the released checkpoints: LinCIR / SEARLE ``{"Phi": state_dict}`` and Pic2Word's
        ``state_dict_img2text`` (``layers.k.0`` and ``fc_out``, ``module.`` prefixes allowed), whose
        sizes are read from the weights (dropout: the paper's, 0.5 and 0.1; inactive at inference).

        Every file is read with ``torch.load(weights_only=True)``: tensors, containers and plain values
        only, so a crafted file cannot run code on load.
        """
        import pickle

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"phi checkpoint {path} does not exist (LinCIR writes phi.pt into its run folder)")
        try:
            blob = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path} holds objects other than tensors and plain values, and is not loaded (only "
                             "weights are read, so a file cannot run code; LinCIR's phi.pt and .ckpt files hold "
                             f"plain data only): {str(exc).splitlines()[0]}") from exc
        if path.suffix == ".ckpt" and isinstance(blob, dict):
            blob = blob.get("phi", blob)
        if isinstance(blob, dict) and not ("config" in blob and "state_dict" in blob):
            blob = _released(blob)
        if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
            raise ValueError(f"{path} is not a phi checkpoint (expected the keys config and state_dict written "
                             "by Phi.save, or a released LinCIR / SEARLE ({'Phi': ...}) or Pic2Word "
                             "(state_dict_img2text) file)")
        phi = cls(**blob["config"])
        phi.load_state_dict(blob["state_dict"], strict=True)
        return phi


def _released(blob: dict[str, Any]) -> Any:
    """A released phi checkpoint in :meth:`Phi.save`'s form, or ``blob`` unchanged if it is none.

    LinCIR / SEARLE: ``{"Phi": {"layers.0/3/6.*"}}``, the same layer indices as ``arch="lincir"``.
    Pic2Word: ``state_dict_img2text`` with ``layers.0.0``, ``layers.1.0`` and ``fc_out`` (Linear ->
    Dropout -> ReLU blocks, then the output layer), mapped to ``arch="pic2word"``'s ``layers.0/3/6``.
    """
    if isinstance(blob.get("Phi"), dict):
        state, arch = dict(blob["Phi"]), "lincir"
    elif isinstance(blob.get("state_dict_img2text"), dict):
        raw = {k.removeprefix("module."): v for k, v in blob["state_dict_img2text"].items()}
        rename = {"layers.0.0": "layers.0", "layers.1.0": "layers.3", "fc_out": "layers.6"}
        state = {}
        for key, value in raw.items():
            prefix, _, leaf = key.rpartition(".")
            if prefix not in rename:
                raise ValueError(f"unexpected Pic2Word key {key!r} (expected layers.0.0, layers.1.0, fc_out)")
            state[f"{rename[prefix]}.{leaf}"] = value
        arch = "pic2word"
    else:
        return blob
    first, last = state["layers.0.weight"], state["layers.6.weight"]
    config = {"input_dim": int(first.shape[1]), "output_dim": int(last.shape[0]), "hidden_dim": int(first.shape[0]),
              "dropout": None, "arch": arch}
    return {"config": config, "state_dict": state}


def noise_std(embeddings: Tensor, scale: float, relative: bool = False) -> float:
    """The noise standard deviation ``sigma`` of :func:`noisy_embeddings`.

    ``relative=False`` (the papers): ``sigma = scale``, an absolute value tuned to CLIP ViT-L/14
    embedding norms (LinCIR 1.0, RTD 0.5). ``relative=True``: ``sigma = scale * mean ||e|| /
    sqrt(D)``, so that at ``u = 1`` the noise norm is about ``scale`` times the mean embedding norm
    whatever the encoder (for encoders far from CLIP-L's scale, such as a small CLIP trained here).

    Shapes:
        embeddings (B, D) -> a float.
    """
    if not relative:
        return float(scale)
    return float(scale * embeddings.detach().float().norm(dim=-1).mean() / embeddings.shape[-1] ** 0.5)


def noisy_embeddings(embeddings: Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """LinCIR's input noise: ``e + scale * u * eps`` with ``u ~ U(0, 1)`` per sample and
    ``eps ~ N(0, I)``, so each sample gets its own noise level between 0 and ``scale``.

    Shapes:
        embeddings (B, D) -> (B, D).
    """
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    if scale == 0:
        return embeddings
    u = torch.rand(embeddings.shape[0], 1, generator=generator, device=embeddings.device, dtype=embeddings.dtype)
    eps = torch.randn(embeddings.shape, generator=generator, device=embeddings.device, dtype=embeddings.dtype)
    return embeddings + scale * u * eps
