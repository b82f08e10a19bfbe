"""Image transforms owned by encoders (torchvision imported lazily).

The model decides how its images are prepared; the datamodule receives the
callables through :class:`mmembed.types.Processor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

TrainAugment = Literal["none", "clip", "reid"]
ImageResize = Literal["squash", "shorter_side_crop"]
Interpolation = Literal["bicubic", "bilinear"]


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


class ResizeToCover:
    """Resize a PIL image, keeping its aspect ratio, to the smallest size that covers (height, width);
    with a centre crop after it this is CLIP's preprocessing (for a square target: shorter side to the
    target side)."""

    def __init__(self, size: tuple[int, int], interpolation: Any) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Any) -> Any:
        from torchvision.transforms import functional as TF

        width, height = image.size
        scale = max(self.size[0] / height, self.size[1] / width)
        target = (max(self.size[0], round(height * scale)), max(self.size[1], round(width * scale)))
        return TF.resize(image, list(target), interpolation=self.interpolation)


def build_image_transforms(
    image_size: tuple[int, int],
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
    train_augment: TrainAugment = "clip",
    reid_pad: int = 10,
    erasing_p: float = 0.5,
    resize: ImageResize = "squash",
    interpolation: Interpolation = "bicubic",
) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    """Build (train, eval) transforms from PIL images to normalised tensors.

    Args:
        image_size: Output (height, width); non-square sizes are fine.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        train_augment: ``"none"`` (train = eval), ``"clip"`` (mild random resized
            crop, open_clip's default) or ``"reid"`` (the IRRA/RDE pipeline:
            resize, horizontal flip, pad + random crop, random erasing filled with
            the mean).
        reid_pad: Padding before the random crop of the ``reid`` pipeline.
        erasing_p: Probability of random erasing in the ``reid`` pipeline.
        resize: How evaluation images reach ``image_size``: ``squash`` (resize to it directly, as
            the person-ReID code does) or ``shorter_side_crop`` (keep the aspect ratio, cover the
            size, centre-crop: CLIP's preprocessing, as the composed-retrieval code does).
        interpolation: Resampling filter of every resize (open_clip: bicubic; the official RDE /
            IRRA code: bilinear).

    Returns:
        ``(train_transform, eval_transform)``.

    Shapes:
        output: (3, H, W) float tensors.
    """
    from torchvision import transforms as T

    size = (int(image_size[0]), int(image_size[1]))
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    if resize == "squash":
        sizing = [T.Resize(size, interpolation=mode)]
    elif resize == "shorter_side_crop":
        sizing = [ResizeToCover(size, mode), T.CenterCrop(size)]
    else:
        raise ValueError(f"resize must be 'squash' or 'shorter_side_crop', got {resize!r}")
    eval_tf = T.Compose([T.Lambda(_to_rgb), *sizing, *to_tensor])
    if train_augment == "none":
        train_tf = eval_tf
    elif train_augment == "clip":
        train_tf = T.Compose(
            [
                T.Lambda(_to_rgb),
                T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=mode),
                *to_tensor,
            ]
        )
    elif train_augment == "reid":
        train_tf = T.Compose(
            [
                T.Lambda(_to_rgb),
                T.Resize(size, interpolation=mode),
                T.RandomHorizontalFlip(0.5),
                T.Pad(reid_pad),
                T.RandomCrop(size),
                *to_tensor,
                T.RandomErasing(p=erasing_p, scale=(0.02, 0.4), value=list(mean)),
            ]
        )
    else:
        raise ValueError(f"train_augment must be 'none', 'clip' or 'reid', got {train_augment!r}")
    return train_tf, eval_tf
