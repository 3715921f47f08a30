"""Memory layout of evaluation passes: channels_last for the pass, the weights' own layout afterwards.

Why: on CPU, oneDNN's NHWC kernels evaluate the embedded ResNets 1.6x faster than NCHW (ConvNeXt,
transformers and MLPs about even; ``benchmarks/bench_pack.py`` prints the eval pass), and the logits agree
with NCHW to ~1e-6 (equal top-1 on every embedded model). Training stays NCHW on CPU so its bitwise
reproducibility is kept: the models go back to contiguous weights when the pass ends, with the same values
and the same Parameter objects, so optimiser state stays attached.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


def relayout(models: Sequence[nn.Module], memory_format: torch.memory_format) -> None:
    """Weights to ``memory_format`` as ordinary tensors, also when called inside an inference-mode pass
    (inference tensors could not train afterwards)."""
    with torch.inference_mode(False), torch.no_grad():
        for model in models:
            model.to(memory_format=memory_format)


@contextmanager
def channels_last_pass(models: Sequence[nn.Module], enabled: bool = True) -> Iterator[bool]:
    """Run the block with the models' weights channels_last (when ``enabled``), contiguous again after.
    Yields whether inputs should be made channels_last (:func:`pass_input`)."""
    if not enabled:
        yield False
        return
    relayout(models, torch.channels_last)
    try:
        yield True
    finally:
        relayout(models, torch.contiguous_format)


def pass_input(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in the layout of the pass (image batches only)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
