"""RetrievalDataModule: the base every retrieval datamodule derives from.

Training yields matched pairs; validation, test and predict yield two loaders,
queries first and gallery second, both carrying identity labels and sample
indices. The model owns the image transforms and the tokenizer: the CLI links
``model.processor`` into ``data.init_args.processor``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from mmembed.types import Processor

Split = Literal["train", "val", "test"]


class RetrievalDataModule(pl.LightningDataModule):
    """Base class for datamodules that feed pairs for training and (queries, gallery) for evaluation.

    Subclasses implement :meth:`build_train_dataset` and :meth:`build_eval_datasets`.

    Args:
        batch_size: Training batch size per device (the last partial batch is dropped,
            so every rank holds the same number of rows for gathered losses).
        eval_batch_size: Batch size for queries and gallery.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (useful on GPU).
        val_split: Which split validation runs on (``"val"`` or ``"test"``;
            several papers select checkpoints on test, which is why it is an option).
        predict_split: Which split ``predict`` encodes.
        processor: Transforms and tokenizer, normally linked from the model by the CLI.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_split: Split = "val",
        predict_split: Split = "test",
        processor: Processor | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_split = val_split
        self.predict_split = predict_split
        self.processor = processor
        self._eval_cache: dict[str, tuple[Dataset, Dataset]] = {}

    # -------------------------------------------------------------- to override
    def build_train_dataset(self) -> Dataset:
        """Return the training pair dataset (items: image, text, label, index)."""
        raise NotImplementedError

    def build_eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        """Return ``(queries, gallery)`` datasets for a split."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def require_processor(self) -> Processor:
        """The linked processor, or a clear error when it is missing."""
        if self.processor is None:
            raise RuntimeError(
                f"{type(self).__name__} has no processor (image transforms + tokenizer). The mmembed CLI links it "
                "from the model; in Python pass processor=model.processor (or encoder.processor) to the datamodule."
            )
        return self.processor

    def eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        """Build (once) and return ``(queries, gallery)`` for a split."""
        if split not in self._eval_cache:
            self._eval_cache[split] = self.build_eval_datasets(split)
        return self._eval_cache[split]

    def _loader(self, dataset: Dataset, train: bool, collate_fn: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            collate_fn=collate_fn,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0 and train,
        )

    def _eval_loaders(self, split: Split) -> list[DataLoader]:
        queries, gallery = self.eval_datasets(split)
        return [self._loader(queries, train=False), self._loader(gallery, train=False)]

    # ---------------------------------------------------------------- lightning
    def train_dataloader(self) -> DataLoader:
        dataset = self.build_train_dataset()
        if len(dataset) < self.batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"the training set has {len(dataset)} pairs, fewer than batch_size={self.batch_size}; "  # type: ignore[arg-type]
                "lower data.init_args.batch_size"
            )
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.predict_split)


class CaptionQueries(Dataset):
    """Evaluation queries: every caption once, with its label. Attribute ``texts`` keeps the strings.

    Shapes:
        item: text (L,) token ids, label, index.
    """

    def __init__(self, texts: list[str], labels: list[int], processor: Processor) -> None:
        self.texts, self.labels, self.tokenizer = texts, labels, processor.tokenizer

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self.tokenizer([self.texts[i]])[0], "label": self.labels[i], "index": i}
