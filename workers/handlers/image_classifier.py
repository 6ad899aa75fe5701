"""Image classification: decode and preprocess as torchvision does, softmax top-k with label names."""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from workers.handlers.base import Handler, InputError
from workers.loading import load_module

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MAX_PIXELS = 50_000_000


def stored_channels_last(module: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are laid out channels-last (as `export_model` writes them).

    A convolution whose weight and input are both channels-last runs in oneDNN's (and cuDNN's) native layout,
    without reordering: measured here (`make bench`'s limit loop, resnet50, 640x480 JPEGs, 2 threads), 29 ->
    34 img/s at batch 4, where batching had not paid at all. The input alone gains little, and converting
    the weights at load would copy them out of the shared page cache into every worker process, so a model
    exported before (contiguous weights) keeps running as it did.
    """
    weights = [p for p in module.parameters() if p.dim() == 4]
    # Some shapes (1x1 kernels, one input channel) are laid out the same either way: at least one must tell.
    return (all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
            and any(not p.is_contiguous() for p in weights))


class ImageClassifier(Handler):
    """Input spec keys: mode (RGB/L), resize (int: shorter side; [w, h]: exact), crop, mean, std, invert."""

    parallel_decode = True  # Pillow decodes and resizes without the GIL; decode() keeps no shared state

    def setup(self, device: torch.device) -> None:
        self.device = device
        self.module = load_module(self.spec, device)
        spec = self.spec.input
        self.mode = spec.get("mode", "RGB")
        self.resize = spec.get("resize", 256)
        self.crop = spec.get("crop", 224)
        self.mean = spec.get("mean", IMAGENET_MEAN)
        self.std = spec.get("std", IMAGENET_STD)
        self.invert = spec.get("invert", False)
        self.labels = self.spec.labels
        self.channels_last = stored_channels_last(self.module)

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        try:
            # The size is checked before any pixel is decoded. (Not by turning Pillow's DecompressionBombWarning
            # into an error: `warnings.catch_warnings` swaps process-wide state, and inputs decode side by side.)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"Image is {img.width}x{img.height}; too many pixels.", code="image_too_large")
            if isinstance(self.resize, int):
                # JPEG DCT scaling: decode big photos at a reduced size that still covers the target.
                scale = self.resize / min(img.size)
                size = (int(img.width * scale) + 1, int(img.height * scale) + 1)
                img.draft(self.mode, size)  # type: ignore[attr-defined]
            img = ImageOps.exif_transpose(img).convert(self.mode)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"Image declares too many pixels: {exc}", code="image_too_large") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"Cannot decode the image: {exc}", code="invalid_image") from exc
        return self.preprocess(img)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        if isinstance(self.resize, int):
            img = F.resize(img, self.resize, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        else:
            # Exact sizes (small models) use box averaging, which undoes nearest-neighbour upscaling exactly.
            img = img.resize(tuple(self.resize), Image.Resampling.BOX)
        if self.crop:
            img = F.center_crop(img, self.crop)
        tensor = F.pil_to_tensor(img)
        if self.invert == "auto":
            border = torch.cat([tensor[:, 0, :].flatten(), tensor[:, -1, :].flatten(),
                                tensor[:, :, 0].flatten(), tensor[:, :, -1].flatten()])
            if border.float().mean() > 127:
                tensor = 255 - tensor
        elif self.invert:
            tensor = 255 - tensor
        tensor = tensor.float().div_(255.0)
        return F.normalize(tensor, self.mean, self.std)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return torch.softmax(self.module(batch), dim=1)

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        k = min(self.spec.top_k, output.numel())
        scores, indices = torch.topk(output, k)
        return {
            "predictions": [
                {"index": int(i), "label": self.labels[int(i)] if int(i) < len(self.labels) else str(int(i)),
                 "probability": float(s)}
                for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
            ]
        }

    def example_input(self) -> torch.Tensor:
        channels = 1 if self.mode == "L" else 3
        if self.crop:
            height = width = int(self.crop)
        elif isinstance(self.resize, int):
            height = width = self.resize
        else:
            width, height = self.resize
        return torch.zeros(channels, height, width)
