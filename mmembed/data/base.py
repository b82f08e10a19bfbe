"""Datamodule bases.

:class:`DataModule` is the thin base every datamodule derives from: batch sizes, workers, and the
model-owned :class:`~mmembed.types.Processor` whose ``collate`` turns raw items into batches (the
CLI links ``model.processor`` into ``data.init_args.processor``). It knows nothing of galleries.

:class:`RetrievalDataModule` adds the retrieval contract: training yields matched pairs;
validation, test and predict yield two loaders, queries first and gallery second, both carrying
labels and sample indices.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from mmembed.types import Processor

Split = Literal["train", "val", "test"]

__all__ = ["CaptionQueries", "DataModule", "ImageGallery", "Records", "RetrievalDataModule", "Split"]


class DataModule(pl.LightningDataModule):
    """Base datamodule: loaders whose batches the model's processor collates.

    Subclasses implement :meth:`build_train_dataset` (raw items) and the evaluation loaders they need.

    Args:
        batch_size: Training batch size per device (the last partial batch is dropped,
            so every rank holds the same number of rows for gathered losses).
        eval_batch_size: Batch size of evaluation loaders.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (useful on GPU).
        processor: Transforms, tokenizer and ``collate``, normally linked from the model by the CLI.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        processor: Processor | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.processor = processor
        self._train_dataset: Dataset | None = None

    # -------------------------------------------------------------- to override
    def build_train_dataset(self) -> Dataset:
        """Return the training dataset (raw items; the processor collates them)."""
        raise NotImplementedError(f"{type(self).__name__} has no training data")

    # ------------------------------------------------------------------ helpers
    def require_processor(self) -> Processor:
        """The linked processor, or a clear error when it is missing."""
        if self.processor is None:
            raise RuntimeError(
                f"{type(self).__name__} has no processor (image transforms + tokenizer + collate). The mmembed CLI "
                "links it from the model; in Python pass processor=model.processor (or encoder.processor)."
            )
        return self.processor

    def collate_fn(self, train: bool) -> Any:
        """The processor's collate with the training (augmenting) or the eval transforms."""
        processor = self.require_processor()
        return processor.train_collate if train else processor.eval_collate

    def loader(self, dataset: Dataset, train: bool, collate_fn: Any = None, **kwargs: Any) -> DataLoader:
        """A loader over ``dataset``: training ones shuffle and drop the last partial batch.

        Args:
            dataset: Raw items.
            train: Training loader (shuffle, drop_last, ``batch_size``, augmenting transforms)
                or evaluation loader (in order, ``eval_batch_size``, eval transforms).
            collate_fn: Override the processor's collate.
            **kwargs: Passed to :class:`~torch.utils.data.DataLoader` (e.g. ``sampler``, ``batch_size``).
        """
        options: dict[str, Any] = {
            "batch_size": self.batch_size if train else self.eval_batch_size,
            "shuffle": train,
            "drop_last": train,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0 and train,
        }
        options.update(kwargs)
        if "sampler" in kwargs:
            options.pop("shuffle")
        return DataLoader(dataset, collate_fn=collate_fn or self.collate_fn(train), **options)

    def train_dataset(self) -> Dataset:
        """The training dataset, built once (the trainer's loader and :meth:`train_pass_dataloader` share it)."""
        if self._train_dataset is None:
            self._train_dataset = self.build_train_dataset()
        return self._train_dataset

    def train_pass_dataloader(self, batch_size: int, augment: bool = True, shuffle: bool = True,
                              rank: int = 0, world_size: int = 1) -> DataLoader:
        """An extra loader over the whole training split, independent of the trainer's loader.

        For passes a method makes over its training data besides training itself (RDE's CCD pass at
        every epoch start). It keeps every sample (no ``drop_last``), keeps its own persistent
        workers, and under several processes reads this rank's shard (call
        ``loader.sampler.set_epoch(epoch)`` when shuffling).

        Args:
            batch_size: Items per batch.
            augment: Use the training (augmenting) transforms; False: the eval transforms.
            shuffle: Shuffle the order.
            rank, world_size: This process's shard.
        """
        dataset = self.train_dataset()
        if world_size > 1:
            sampler: Any = DistributedSampler(dataset, world_size, rank, shuffle=shuffle)
        else:
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return self.loader(dataset, train=augment, sampler=sampler, batch_size=batch_size, drop_last=False,
                           persistent_workers=self.num_workers > 0)

    # ---------------------------------------------------------------- lightning
    def train_dataloader(self) -> DataLoader:
        self._train_dataset = None  # rebuilt every epoch when the trainer reloads loaders
        dataset = self.train_dataset()
        if len(dataset) < self.batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"the training set has {len(dataset)} items, fewer than batch_size={self.batch_size}; "  # type: ignore[arg-type]
                "lower data.init_args.batch_size"
            )
        return self.loader(dataset, train=True)


class RetrievalDataModule(DataModule):
    """Datamodules that feed pairs for training and (queries, gallery) for evaluation.

    Subclasses implement :meth:`build_train_dataset` and :meth:`build_eval_datasets`.

    Args:
        val_split: Which split validation runs on (``"val"`` or ``"test"``;
            several papers select checkpoints on test, which is why it is an option).
        predict_split: Which split ``predict`` encodes.
        **kwargs: Loader options of :class:`DataModule` (``batch_size``, ``eval_batch_size``,
            ``num_workers``, ``pin_memory``, ``processor``).
    """

    def __init__(self, val_split: Split = "val", predict_split: Split = "test", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_split = val_split
        self.predict_split = predict_split
        self._eval_cache: dict[str, tuple[Dataset, Dataset]] = {}

    def build_eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        """Return ``(queries, gallery)`` datasets for a split."""
        raise NotImplementedError

    def eval_datasets(self, split: Split) -> tuple[Dataset, Dataset]:
        """Build (once) and return ``(queries, gallery)`` for a split."""
        if split not in self._eval_cache:
            self._eval_cache[split] = self.build_eval_datasets(split)
        return self._eval_cache[split]

    def _eval_loaders(self, split: Split) -> list[DataLoader]:
        queries, gallery = self.eval_datasets(split)
        return [self.loader(queries, train=False), self.loader(gallery, train=False)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.predict_split)


class Records(Dataset):
    """Raw items from parallel columns: ``Records(text=texts, label=labels)[i]`` is
    ``{"text": texts[i], "label": labels[i], "index": i}``.

    Args:
        **columns: Equal-length sequences, one per item key.

    Raises:
        ValueError: If there is no column or the columns differ in length.
    """

    def __init__(self, **columns: Any) -> None:
        sizes = {name: len(values) for name, values in columns.items()}
        if not sizes:
            raise ValueError("Records needs at least one column, e.g. Records(text=texts, label=labels)")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Records needs columns of one length, got {sizes}")
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{name: values[i] for name, values in self.columns.items()}, "index": i}


class CaptionQueries(Records):
    """Evaluation queries: every caption once, with its label. Attribute ``texts`` keeps the strings.

    Shapes:
        item: text (a string; tokenised at collate), label, index.
    """

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        super().__init__(text=texts, label=labels)
        self.texts, self.labels = texts, labels


class ImageGallery(Records):
    """Evaluation gallery: every image once, with its label. Attribute ``image_paths`` keeps the files.

    Shapes:
        item: image (a path or reference; loaded and transformed at collate), label, index.
    """

    def __init__(self, image_paths: list[Any], labels: list[int]) -> None:
        super().__init__(image=image_paths, label=labels)
        self.image_paths, self.labels = image_paths, labels
