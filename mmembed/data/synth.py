"""SynthPedesDataModule: the embedded person world, generated on first use.

The world is written once into ``root`` (in the CUHK-PEDES layout) by
``prepare_data`` and read with the same loader as the real dataset. An existing
folder is never modified: if it holds a world generated with other parameters,
the run stops and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any

from mmembed.data.errors import DatasetFormatError
from mmembed.data.reid import CaptionNoise, PedesDataModule


class SynthPedesDataModule(PedesDataModule):
    """SynthPedes: procedural pedestrians with captions, in the CUHK-PEDES layout.

    Args:
        root: Folder of the world; generated there if it does not exist.
        num_ids: Number of identities (split into train / val / test).
        seed: Generation seed (the output is deterministic for a seed).
        images_per_id: Images rendered per identity.
        captions_per_image: Captions written per image.
        image_height: Rendered image height in pixels.
        image_width: Rendered image width in pixels.
        workers: Processes used to render.
        caption_noise: Noisy-correspondence generator for the training split (see ``PedesDataModule``).
        **kwargs: Loader and split options of :class:`~mmembed.data.base.RetrievalDataModule`.
    """

    def __init__(
        self,
        root: str = ".cache/synth_pedes",
        num_ids: int = 400,
        seed: int = 0,
        images_per_id: int = 4,
        captions_per_image: int = 2,
        image_height: int = 128,
        image_width: int = 64,
        workers: int = 2,
        caption_noise: CaptionNoise | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, "CUHK-PEDES", caption_noise, **kwargs)
        self.generation = {
            "num_ids": num_ids,
            "seed": seed,
            "images_per_id": images_per_id,
            "captions_per_image": captions_per_image,
            "image_size": (image_height, image_width),
        }
        self.workers = workers

    def prepare_data(self) -> None:
        """Generate the world if ``root`` does not hold one; check parameters if it does."""
        meta_path = self.root / "synth_meta.json"
        if meta_path.is_file():
            self._check_meta(meta_path)
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise DatasetFormatError(
                f"{self.root} exists and is not a SynthPedes folder (no synth_meta.json); "
                "point data.init_args.root at an empty or missing folder"
            )
        from mmembed.data.synthetic import write_synth_pedes

        write_synth_pedes(self.root, workers=self.workers, **self.generation)

    def _check_meta(self, meta_path: Path) -> None:
        from mmembed.data.synthetic import synth_pedes_meta

        meta = json.loads(meta_path.read_text())
        expected = synth_pedes_meta(**self.generation)  # parameters, format version and split sizes
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            details = ", ".join(f"{k}: folder has {a}, config asks {b}" for k, (a, b) in wrong.items())
            raise DatasetFormatError(
                f"{meta_path}: this SynthPedes folder was generated with other parameters ({details}). "
                "Point data.init_args.root at another folder (it is never overwritten)."
            )
