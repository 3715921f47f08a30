"""A model's feature maps as NCHW grids, read in the format the model declares rather than guessed.

Why a module of its own: AMTML-KD and Talking Models read "the last feature map" and maps at split
points of any timm model, and the tensors timm hands out come in several layouts: CNNs give NCHW maps;
Swin declares ``output_fmt = "NHWC"`` and gives (B, 7, 7, C); ViT, XCiT, VOLO, CoaT, Twins and the MLPs
give token sequences (B, N, D) with 0-2 prefix tokens (class / distillation) whose count not every model
declares; PiT's ``forward_features`` is its class token(s) alone, the grid lives only in its stages.
Reading those by shape alone read Swin's 7x7x768 map as 7 channels, and PiT's class (or distillation)
token as a 1x1 map. Here each model is read from what timm declares:

- the last map: ``forward_features`` in the declared ``output_fmt`` (NCHW unless the model says NHWC);
  a token sequence with its patch grid taken from the last level of ``forward_intermediates(...,
  output_fmt="NCHW")`` (the prefix is what is left over, checked against ``num_prefix_tokens`` where
  declared); a model whose ``forward_features`` does not hold its grid (PiT, pooled outputs) reads its last
  map from ``forward_intermediates`` instead (the final output, for the head, comes from the same pass);
- levels (AMTML's hint groups): ``forward_intermediates(..., output_fmt="NCHW")``;
- split points (Talking Models): the module whose output *is* a level, found by a forward-hook probe of
  the modules that really run (value-matched against ``forward_intermediates`` on one real input; by
  shape on the ``meta`` device, where validation probes full-size models without weights), not by
  ``feature_info`` module names, which may name containers that never run (CoaT's ``serial_blocks1``) or
  attributes that do not exist (Twins' ``block.3``).

A model none of this can read raises :class:`MapsUnreadable`; :func:`maps_problem` turns that into the
one-line reason validation refuses a study with.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["MapFormat", "ModelMaps", "SplitPoint", "MapsUnreadable", "model_maps", "forward_map", "level_maps",
           "split_point", "maps_problem", "vector_as_features"]


class MapsUnreadable(ValueError):
    """A model's maps cannot be read as NCHW grids (or the split point asked for does not exist)."""


@dataclass(frozen=True)
class MapFormat:
    """How a tensor of a model reads as an NCHW grid: ``nchw`` as it is, ``nhwc`` permuted, ``tokens``
    [B, N, D] without ``prefix`` leading tokens, the rest reshaped row-major to the patch grid ``size``."""

    kind: str  # nchw | nhwc | tokens
    prefix: int = 0
    size: tuple[int, int] = (0, 0)

    def grid(self, t: Tensor) -> Tensor:
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        b, _, d = t.shape
        return t[:, self.prefix:].transpose(1, 2).reshape(b, d, *self.size)

    def native(self, grid: Tensor, like: Tensor) -> Tensor:
        """A grid back in this format, shaped like ``like`` (a module output being replaced): tokens get the
        grid as patch tokens and the grid mean in each prefix token, so no other view of the input leaks in."""
        if self.kind == "nchw":
            return grid
        if self.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        tokens = grid.flatten(2).transpose(1, 2)
        if self.prefix == 0:
            return tokens
        b, _, d = like.shape
        return torch.cat([tokens.mean(1, keepdim=True).expand(b, self.prefix, d), tokens], dim=1)


@dataclass(frozen=True)
class ModelMaps:
    """What a probe learned about one model at one input size (see the module docstring)."""

    shape: tuple[int, int, int]  # (C, H, W) of the last map
    native: tuple[int, ...]  # forward_features' shape without the batch
    fmt: MapFormat | None  # how forward_features reads as the last map; None: it comes from forward_intermediates
    levels: tuple[tuple[int, int, int], ...]  # (C, H, W) of each forward_intermediates level, shallow to deep

    @property
    def from_intermediates(self) -> bool:
        return self.fmt is None


@dataclass(frozen=True)
class SplitPoint:
    """The module whose output is level ``level`` (``split`` levels below the top) and how it reads."""

    name: str
    module: nn.Module
    fmt: MapFormat
    shape: tuple[int, int, int]
    level: int


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) and out else out


def declared_format(model: nn.Module) -> str:
    """timm's ``output_fmt`` of ``forward_features`` (a str or a ``Format`` enum), NCHW when undeclared."""
    fmt = getattr(model, "output_fmt", None)
    return str(getattr(fmt, "value", fmt) or "NCHW").upper()


@contextlib.contextmanager
def _probing(model: nn.Module, x: Tensor) -> Iterator[None]:
    """Eval mode (every module's flag restored after), no gradients, fp32: a probe changes nothing a step
    sees (no BatchNorm statistics, no RNG draws) however often it runs."""
    flags = [(m, m.training) for m in model.modules()]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model.eval()
    amp = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else contextlib.nullcontext()
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # passes compared by value
        with torch.no_grad(), amp:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        for m, flag in flags:
            m.training = flag


def _intermediates(model: nn.Module, x: Tensor, indices: int | None = None) -> list[Tensor] | None:
    """timm's ``forward_intermediates`` levels as NCHW grids, or None when the model has none."""
    if not hasattr(model, "forward_intermediates"):
        return None
    try:
        return list(model.forward_intermediates(x, indices=indices, output_fmt="NCHW", intermediates_only=True))
    except (NotImplementedError, TypeError, AssertionError, ValueError, IndexError, RuntimeError):
        return None


def _token_format(model: nn.Module, native: tuple[int, ...], last: Tensor | None) -> MapFormat | None:
    """Tokens (N, D) as a grid: the grid from the last intermediate; None when the tokens hold no grid."""
    n, _ = native
    declared = getattr(model, "num_prefix_tokens", None)
    if last is not None:
        h, w = last.shape[-2:]
        prefix = n - h * w
        if prefix < 0:
            return None  # fewer tokens than the grid (PiT's class tokens): the grid is elsewhere
        if declared is not None and int(declared) != prefix:
            raise MapsUnreadable(f"forward_features gives {n} tokens, its last level a {h}x{w} grid, but timm "
                                 f"declares {declared} prefix token(s)")
        return MapFormat("tokens", prefix, (h, w))
    if declared is None:
        raise MapsUnreadable(f"forward_features gives {n} tokens and the model declares neither "
                             f"forward_intermediates nor num_prefix_tokens, so its patch grid is unknown")
    side = math.isqrt(max(n - int(declared), 0))
    if side * side != n - int(declared) or side == 0:
        raise MapsUnreadable(f"forward_features gives {n} tokens, {declared} of them prefix tokens: not a square "
                             f"grid, and no forward_intermediates to read it from")
    return MapFormat("tokens", int(declared), (side, side))


def _probe(model: nn.Module, x: Tensor) -> ModelMaps:
    with _probing(model, x):
        f = _first(model.forward_features(x))
        levels = _intermediates(model, x)
    native = tuple(f.shape[1:])
    last = levels[-1] if levels else None
    fmt: MapFormat | None
    if f.dim() == 4:
        fmt = MapFormat("nhwc" if declared_format(model) == "NHWC" else "nchw")
    elif f.dim() == 3:
        fmt = _token_format(model, native, last)
    else:
        fmt = None
    if fmt is None and last is None:
        raise MapsUnreadable(f"forward_features gives shape {native}, which holds no grid, and the model has no "
                             f"forward_intermediates to read its maps from")
    shape = tuple(fmt.grid(f).shape[1:]) if fmt is not None else tuple(last.shape[1:])
    if fmt is not None and fmt.kind != "tokens" and last is not None:
        other = MapFormat("nchw" if fmt.kind == "nhwc" else "nhwc").grid(f).shape[2:]
        if shape[1:] != tuple(last.shape[2:]) and tuple(other) == tuple(last.shape[2:]):
            raise MapsUnreadable(f"forward_features {native} reads as a {shape[1]}x{shape[2]} grid in its declared "
                                 f"{fmt.kind.upper()} layout, but only the other layout fits the last level of "
                                 f"forward_intermediates ({last.shape[2]}x{last.shape[3]})")
    return ModelMaps(shape, native, fmt, tuple(tuple(t.shape[1:]) for t in levels or ()))


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, ModelMaps]]" = weakref.WeakKeyDictionary()


def model_maps(model: nn.Module, x: Tensor) -> ModelMaps:
    """How ``model``'s maps read at the input size of ``x`` (probed on one sample once, then cached)."""
    per = _CACHE.setdefault(model, {})
    key = (tuple(x.shape[1:]), x.device.type == "meta")
    if key not in per:
        per[key] = _probe(model, x[:1])
    return per[key]


def forward_map(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``forward_features(x)`` (what ``forward_head`` takes) and the last map as an NCHW grid, from one pass
    with gradients (``forward_intermediates`` for a model whose features hold no grid)."""
    maps = model_maps(model, x)
    if maps.fmt is None:
        final, inter = model.forward_intermediates(x, indices=1, output_fmt="NCHW")
        return final, inter[-1]
    f = model.forward_features(x)
    return f, maps.fmt.grid(_first(f))


def level_maps(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The final features, the last map and the last ``k`` levels of ``forward_intermediates`` as NCHW
    grids, shallow to deep, from one pass. Raises :class:`MapsUnreadable` without intermediates."""
    maps = model_maps(model, x)
    if len(maps.levels) < k:
        raise MapsUnreadable(f"{type(model).__name__} has {len(maps.levels)} forward_intermediates level(s), {k} asked")
    final, inter = model.forward_intermediates(x, indices=k, output_fmt="NCHW")
    last = inter[-1] if maps.fmt is None else maps.fmt.grid(_first(final))
    return final, last, list(inter)


def _readings(t: Tensor, shape: tuple[int, ...]) -> list[MapFormat]:
    """The formats in which a module output ``t`` would have the NCHW grid shape ``shape``."""
    c, h, w = shape
    if t.dim() == 4:
        return [f for f, s in ((MapFormat("nchw"), (c, h, w)), (MapFormat("nhwc"), (h, w, c))) if tuple(t.shape[1:]) == s]
    if t.dim() == 3 and t.shape[2] == c and 0 <= t.shape[1] - h * w <= 8:
        return [MapFormat("tokens", int(t.shape[1] - h * w), (h, w))]
    return []


def _split_module(model: nn.Module, x: Tensor, target: Tensor) -> tuple[str, MapFormat] | None:
    """The module (name, format) whose output is ``target`` in ``forward_features``: the first module to
    finish with that value (by value on a real device, by shape on ``meta``), then its enclosing modules
    while they give the same tensor (``layer3`` rather than its last block or that block's final ReLU), so
    a replaced output is what every later layer reads. Modules called more than once are never chosen;
    containers that never run (ModuleLists) are looked through."""
    exact = x.device.type != "meta"
    # two passes of the same layers agree to rounding (GPU kernels may differ between calls); other
    # layers' outputs differ at the scale of the values
    tol = 1e-3 * float(target.float().abs().max()) + 1e-6 if exact else 0.0
    calls: dict[str, int] = {}
    hits: dict[str, tuple[int, MapFormat]] = {}

    def hook(name: str):
        def fn(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            t = _first(out)
            if name in hits or not torch.is_tensor(t):
                return
            for fmt in _readings(t, tuple(target.shape[1:])):
                if not exact or torch.allclose(fmt.grid(t).float(), target.float(), rtol=1e-3, atol=tol):
                    hits[name] = (len(calls), fmt)
                    return
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with _probing(model, x):
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    once = {n: h for n, h in hits.items() if calls[n] == 1}
    if not once:
        return None
    name = min(once, key=lambda n: once[n][0])
    parent = name
    while "." in parent:
        parent = parent.rsplit(".", 1)[0]
        if parent in once:
            name = parent
        elif parent in calls:  # an enclosing module that runs and gives another tensor
            break
    return name, once[name][1]


def split_point(model: nn.Module, x: Tensor, split: int, who: str = "model") -> SplitPoint:
    """The module whose output is the level ``split`` levels below the top of ``forward_intermediates``
    (:func:`_split_module`), for a forward hook
    that reads or replaces the state there. Raises :class:`MapsUnreadable` naming the valid splits."""
    maps = model_maps(model, x)
    n = len(maps.levels)
    if split < 0 or split >= max(n, 1) or n == 0:
        valid = f"0 to {n - 1}" if n else "none (the model has no forward_intermediates)"
        raise MapsUnreadable(f"talking_models split = {split}: the {who} ({type(model).__name__}) has {n} feature "
                             f"level(s) in timm's forward_intermediates; valid: {valid}")
    level = n - 1 - split
    with _probing(model, x[:1]):
        target = _intermediates(model, x[:1])[level]
    found = _split_module(model, x[:1], target)
    if found is None:
        raise MapsUnreadable(f"talking_models split = {split}: no module of the {who} ({type(model).__name__}) "
                             f"outputs its level {level} ({tuple(target.shape[1:])}), so no state can be exchanged there")
    name, fmt = found
    return SplitPoint(name, model.get_submodule(name), fmt, tuple(target.shape[1:]), level)


def vector_as_features(model: nn.Module, v: Tensor, maps: ModelMaps) -> Tensor:
    """A state vector [B, C] in the form of ``forward_features``' output, so that ``forward_head``'s pooling
    reads back exactly ``v``: a 1x1 map in the declared layout (NCHW or NHWC), or ``v`` as every token."""
    native = maps.native
    if len(native) == 3:
        return v.view(v.shape[0], 1, 1, -1) if maps.fmt is not None and maps.fmt.kind == "nhwc" else v.view(*v.shape, 1, 1)
    if len(native) == 2:
        return v.unsqueeze(1).expand(-1, native[0], -1)
    return v


def maps_problem(model: nn.Module, input_size: tuple[int, int, int], *, split: int | None = None,
                 who: str = "model") -> str | None:
    """Why ``model``'s maps cannot be read (or ``split`` does not exist), or None when they can. Runs on the
    model's device; on ``meta`` (no weights, no compute) level modules are matched by shape."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_size, device=device)
    try:
        model_maps(model, x)
        if split is not None and split > 0:
            split_point(model, x, split, who)
    except MapsUnreadable as err:
        return str(err)
    return None
