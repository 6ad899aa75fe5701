"""1×1 convolutions of single-thread forward passes through oneDNN, where that is measured faster.

PyTorch picks a CPU convolution's kernel per call. A 1×1, stride-1 convolution on fewer than 16 samples in a
single-thread pass goes to its native path (the input as a matrix, times the weight through BLAS's sgemm), on
the grounds, in its source, that "for 1x1 filters, MKLDNN is faster than THNN when multi-threaded, but THNN is
faster when single-threaded". With two or more threads the same convolution runs on oneDNN. InferQ's
single-thread passes are common: a batch cut into side-by-side streams runs one pass per thread, and a
layout of one process per core runs every pass on one thread.

Measured on the 2-core AMD EPYC host of docs/benchmarks.md, one thread, torchvision architectures, the
1×1 convolutions through oneDNN against PyTorch's choice (the median of three interleaved rounds):

| model | batch 1 | 2 | 4 | 8 |
| --- | --- | --- | --- | --- |
| resnet50 | 4% slower | 2% faster | 4% faster | 10% faster |
| resnet152 | | 6.5% faster | | 9% faster |
| resnet18 | 3.5% faster | 2% slower | level | 1% faster |
| mobilenet_v3_small | 27% slower | | 4% slower | |
| efficientnet_b0 | 8% slower | | 5% faster | |

So it depends on the model and the batch, and the worker measures it per model at load
(`Handler.plan_conv1x1`). The resnet50 limit loop as two single-thread streams at batch 8 ran 6–7% faster
through oneDNN (19.3 -> 20.7 img/s, 100 -> 93 ms of CPU per image), level with one 2-thread pass.

Routing is a class swap of the eligible `nn.Conv2d` modules (`route`): their parameters stay the tensors
they are (mapped from the store, shared between worker processes), and the swap is undone by routing back.
Off the CPU, or on other dtypes, the swapped forward is `nn.Conv2d`'s own. Exported programs and TorchScript
modules hold no `nn.Conv2d` modules and are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("auto", "onednn", "native")


class OneDNNConv2d(nn.Conv2d):
    """An `nn.Conv2d` whose CPU float32 forward always runs on oneDNN (`torch.mkldnn_convolution`, the kernel
    PyTorch itself picks for the same convolution on two or more threads)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Conv2d's own parameter name
        padding = self.padding
        if (input.device.type == "cpu" and input.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not isinstance(padding, str)):  # `route` leaves padding by name alone; this keeps mypy sure
            return torch.mkldnn_convolution(input, self.weight, self.bias, padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(input)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def eligible(conv: nn.Module) -> bool:
    """A plain 1×1, stride-1, undilated convolution with zero padding given as numbers: the convolutions
    PyTorch runs natively on one thread (strided or dilated ones already go to oneDNN)."""
    return (type(conv) in (nn.Conv2d, OneDNNConv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def route(module: nn.Module | None, onednn: bool) -> int:
    """Send `module`'s eligible 1×1 convolutions through oneDNN (`onednn`) or back to PyTorch's choice; how
    many there are (0: nothing to route, or oneDNN is not in this build)."""
    if module is None or not available():
        return 0
    convs = [m for m in module.modules() if eligible(m)]
    for conv in convs:
        conv.__class__ = OneDNNConv2d if onednn else nn.Conv2d
    return len(convs)


def routed(module: nn.Module | None) -> bool:
    return module is not None and any(type(m) is OneDNNConv2d for m in module.modules())
