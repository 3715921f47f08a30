"""Load any zoo model safely: timm pretrained names, local checkpoints, embedded or random models.

Every path ends in ``timm.create_model``; local files go through timm's own pretrained path
(``pretrained_cfg_overlay=dict(file=...)``), which reads safetensors, or ``torch.load(weights_only=True)``
for other files. Nothing here downloads: pretrained weights must already be in the local Hugging Face
cache (see :func:`prefetch`), otherwise the error names the model and how to fetch it.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import pickle
import urllib.parse
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
from timm.data import resolve_data_config

from zoo_study.zoo import archs as _archs  # noqa: F401  (registers the embedded MLP variants)
from zoo_study.zoo.catalog import CatalogRecord, family_of
from zoo_study.zoo.ref import SOURCES, ModelRef

RECIPE_METADATA_KEY = "zoo_study_recipe"

# the architecture kwargs each loaded model was built with (a ModelRef's model_kwargs, merged with its
# checkpoint's metadata): scratch_like rebuilds the same widths from them, also for a local checkpoint
# that carries no zoo-study metadata (a .pth, a foreign safetensors file)
_BUILD_KWARGS: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which model and what to do."""


# --------------------------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The most telling line of an exception message, so every ModelLoadError stays one line.

    torch's state-dict and weights-only errors start with a generic header ("Error(s) in loading
    state_dict for X:", "Weights only load failed...") and name the real problem further down; pick
    that line when there is one.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    for key in ("size mismatch", "missing key", "unexpected key", "unsupported global"):
        for ln in lines:
            if key in ln.lower():
                return ln[:limit]
    return lines[0][:limit]


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """zoo-study metadata stored in a safetensors header (empty dict for other files).

    Raises :class:`ModelLoadError` (one line) for a file that is not valid safetensors.
    """
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return json.loads(meta[RECIPE_METADATA_KEY]) if RECIPE_METADATA_KEY in meta else {}
    except Exception as exc:  # SafetensorError, JSON errors: a corrupt or foreign file
        raise ModelLoadError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc


def _url_weights_missing(arch: str) -> str | None:
    """The URL of ``arch``'s pretrained weights when timm would fetch them over plain HTTP and they are
    not in torch's hub cache yet; None otherwise.

    Why: Hugging Face hub downloads obey HF_HUB_OFFLINE (see :func:`_offline`), but the few timm models
    whose weights live at a plain URL go through ``torch.hub``, which knows no offline switch. Checking
    the cache first keeps ``load_model`` from ever opening a connection.
    """
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or cfg.hf_hub_id or cfg.file or not cfg.url:
        return None  # hub-hosted (offline switch applies), a local file, or no weights at all
    fname = os.path.basename(urllib.parse.urlparse(cfg.url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    return None if os.path.isfile(cached) else cfg.url


def _checkpoint_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def _checkpoint_classes(path: str, classifier: str | tuple[str, ...] | None) -> int | None:
    """Number of output classes stored in a checkpoint's classifier weight, when it can be found.

    Keys saved from a DistributedDataParallel wrapper (``module.fc.weight``) count too: timm strips that
    prefix when it loads, so the class check must see through it as well.
    """
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    wanted = {f"{name}.weight" for name in names} | {f"module.{name}.weight" for name in names}
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            for key in fh.keys():
                if key in wanted:
                    return int(fh.get_slice(key).get_shape()[0])
        return None
    state = _checkpoint_state(path)
    for key, w in state.items():
        if key in wanted and hasattr(w, "shape"):
            return int(w.shape[0])
    return None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads while loading: weights must be in the local cache."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc  # the constant is read at import time

        old_const = hc.HF_HUB_OFFLINE
        hc.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - hub not installed
        hc, old_const = None, None
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def _offline_error(arch: str) -> ModelLoadError:
    return ModelLoadError(
        f"weights for timm model {arch!r} are not available offline; on a machine with network run "
        f"`zoo-study prefetch {arch}` (fills the Hugging Face cache, HF_HOME, and torch's hub cache) or give a "
        f"local file with checkpoint=<path.safetensors>"
    )


def check_timm_name(name: str, *, pretrained: bool) -> None:
    """Raise a one-line error for an unknown timm architecture or pretrained tag, with suggestions."""
    base = name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        raise ModelLoadError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    if pretrained and "." in name and name not in set(timm.list_pretrained(base + "*")):
        tags = timm.list_pretrained(base + ".*")[:5]
        raise ModelLoadError(f"timm has no pretrained weights named {name!r}; known tags: {', '.join(tags) or 'none'}")


def _data_config(model: nn.Module, override: dict[str, Any] | None) -> dict[str, Any]:
    cfg = dict(resolve_data_config({}, model=model))
    if override:
        cfg.update(override)
    cfg["input_size"] = [int(v) for v in cfg["input_size"]]
    cfg["mean"] = [float(v) for v in cfg["mean"]]
    cfg["std"] = [float(v) for v in cfg["std"]]
    cfg["crop_pct"] = float(cfg.get("crop_pct") or 1.0)
    cfg["interpolation"] = str(cfg.get("interpolation") or "bilinear")
    return cfg


# ------------------------------------------------------------------------------------------------ load
def load_model(ref: ModelRef, *, device: str | torch.device = "cpu") -> tuple[nn.Module, CatalogRecord]:
    """Build the model for ``ref`` in eval mode with its weights, and its catalog record."""
    src = _resolve_source(ref)
    check_timm_name(src.arch, pretrained=ref.source == "timm" and src.checkpoint is None)
    create_kwargs: dict[str, Any] = dict(src.kwargs)
    if ref.num_classes is not None:
        create_kwargs["num_classes"] = ref.num_classes
    model = _create(ref, src.arch, src.checkpoint, create_kwargs)
    model.eval().to(device)
    _BUILD_KWARGS[model] = {k: v for k, v in create_kwargs.items() if k != "num_classes"}
    num_classes = int(getattr(model, "num_classes", 0) or create_kwargs.get("num_classes", 0))
    if ref.num_classes is not None and num_classes != ref.num_classes:
        raise ModelLoadError(
            f"model {ref.model_id!r} predicts {num_classes} classes but the dataset has {ref.num_classes}"
        )
    return model, _record(ref, src, model, num_classes)


@dataclass
class _Source:
    """What builds a model: its timm arch and kwargs, data config override, and the local checkpoint (with
    the zoo-study metadata it carries: the recipe and training time of an embedded zoo model)."""

    arch: str | None
    kwargs: dict[str, Any]
    data_override: dict[str, Any]
    checkpoint: str | None = None
    recipe_json: str | None = None
    train_seconds: float | None = None


def _resolve_source(ref: ModelRef) -> _Source:
    """The ref's arch and kwargs, completed from its checkpoint's metadata (the ref's own values win)."""
    src = _Source(ref.arch, dict(ref.model_kwargs), dict(ref.data_config or {}))
    if ref.checkpoint is None:
        return src
    checkpoint = src.checkpoint = str(Path(os.path.expanduser(ref.checkpoint)))
    if not os.path.isfile(checkpoint):
        raise ModelLoadError(f"model {ref.model_id!r}: checkpoint file {checkpoint!r} does not exist")
    try:
        meta = read_checkpoint_metadata(checkpoint)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {ref.model_id!r}: {exc}") from exc.__cause__
    src.train_seconds = meta.get("train_seconds")
    if meta:
        src.arch = src.arch or meta.get("arch")
        src.kwargs = {**meta.get("model_kwargs", {}), **src.kwargs}
        src.data_override = {**meta.get("data_config", {}), **src.data_override}
        src.recipe_json = json.dumps(meta, sort_keys=True)
    if not src.arch:
        raise ModelLoadError(
            f"model {ref.model_id!r}: checkpoint {checkpoint!r} carries no zoo-study metadata; give arch=<timm name>"
        )
    return src


def _create(ref: ModelRef, arch: str, checkpoint: str | None, create_kwargs: dict[str, Any]) -> nn.Module:
    """timm's model with its weights (random with the ref's seed, a local checkpoint, or timm's cached
    pretrained weights, offline); every failure becomes one :class:`ModelLoadError` naming the model."""
    try:
        if ref.source == "random":
            torch.manual_seed(ref.seed)
            return timm.create_model(arch, pretrained=False, **create_kwargs)
        if checkpoint is not None:
            return _create_from_checkpoint(ref, arch, checkpoint, create_kwargs)
        if _url_weights_missing(arch):
            raise _offline_error(arch)
        with _offline():
            return timm.create_model(arch, pretrained=True, **create_kwargs)
    except ModelLoadError:
        raise
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met a non-tensor object
        raise ModelLoadError(
            f"model {ref.model_id!r}: checkpoint {checkpoint!r} holds pickled objects other than tensors and "
            f"was refused by torch.load(weights_only=True) ({_one_line(exc, 160)}); "
            "save its state_dict as safetensors instead"
        ) from exc
    except RuntimeError as exc:
        msg = _one_line(exc)
        if "size mismatch" in str(exc) or "Missing key" in str(exc) or "Unexpected key" in str(exc):
            raise ModelLoadError(
                f"model {ref.model_id!r}: checkpoint {checkpoint!r} does not fit architecture {arch!r} ({msg})"
            ) from exc
        raise ModelLoadError(f"model {ref.model_id!r}: could not build {arch!r}: {msg}") from exc
    except Exception as exc:  # hub / cache errors when offline
        name = type(exc).__name__
        if ref.source == "timm" and checkpoint is None and any(
            s in name + str(exc) for s in ("Offline", "LocalEntryNotFound", "offline", "not found", "Connection")
        ):
            raise _offline_error(arch) from exc
        raise ModelLoadError(f"model {ref.model_id!r}: could not load {arch!r}: {name}: {_one_line(exc)}") from exc


def _create_from_checkpoint(ref: ModelRef, arch: str, checkpoint: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """timm's model loaded from a local checkpoint through timm's own ``pretrained_cfg_overlay``, its class
    count read from the file (``create_kwargs`` gains it when the ref has none)."""
    probe_cfg = timm.models.get_pretrained_cfg(arch)
    classifier = probe_cfg.classifier if probe_cfg is not None else None
    if classifier is None:
        with torch.device("meta"):
            classifier = timm.create_model(arch, pretrained=False, **create_kwargs).pretrained_cfg.get(
                "classifier", "head"
            )
    ckpt_classes = _checkpoint_classes(checkpoint, classifier)
    if ref.num_classes is not None and ckpt_classes is not None and ckpt_classes != ref.num_classes:
        raise ModelLoadError(
            f"model {ref.model_id!r}: checkpoint {checkpoint!r} has {ckpt_classes} classes but the "
            f"dataset has {ref.num_classes}; use a checkpoint trained on this label space"
        )
    if ckpt_classes is not None:
        create_kwargs.setdefault("num_classes", ckpt_classes)
    overlay: dict[str, Any] = {"file": checkpoint}
    if "num_classes" in create_kwargs:
        # tell timm the file has the model's head: when the pretrained config's class count
        # differs from the model's, timm drops the classifier weights and loads non-strictly,
        # which would leave a random head without any error
        overlay["num_classes"] = create_kwargs["num_classes"]
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **create_kwargs)


def _record(ref: ModelRef, src: _Source, model: nn.Module, num_classes: int) -> CatalogRecord:
    """The catalog row of a built model: its data config as timm resolves it, size, and weights identity."""
    cfg = _data_config(model, src.data_override)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    checkpoint = src.checkpoint
    return CatalogRecord(
        model_id=ref.model_id,
        source=ref.source,
        arch=src.arch,
        family=ref.family or family_of(src.arch),
        params_m=round(params_m, 4),
        num_classes=num_classes,
        input_size=cfg["input_size"],
        crop_pct=cfg["crop_pct"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
        reported_top1=ref.reported_top1,
        checkpoint=checkpoint,
        weights_id=file_digest(checkpoint) if checkpoint else (f"random-seed{ref.seed}" if ref.source == "random" else src.arch),
        recipe_json=src.recipe_json,
        train_seconds=float(src.train_seconds) if src.train_seconds is not None else None,
    )


def scratch_like(model: nn.Module, record: CatalogRecord, seed: int) -> nn.Module:
    """The architecture of ``model`` freshly initialised by timm with ``seed`` (``transfer.student_init =
    "scratch"``), in eval mode on ``model``'s device.

    Built from the record's arch with the kwargs ``model`` was built with by :func:`load_model` (a
    ModelRef's ``model_kwargs``: a local checkpoint of a narrowed timm arch), else the embedded zoo's model
    kwargs from its recipe, so the init is timm's own, exactly as a from-scratch training run would start;
    its parameter names and shapes must match ``model``'s, else the record cannot rebuild the model and
    this raises."""
    kwargs: dict[str, Any] = dict(_BUILD_KWARGS.get(model) or {})
    if not kwargs and record.recipe_json:
        kwargs = dict(json.loads(record.recipe_json).get("model_kwargs") or {})
    kwargs["num_classes"] = record.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        fresh = timm.create_model(record.arch, pretrained=False, **kwargs)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise ModelLoadError(f"model {record.model_id!r}: cannot rebuild arch {record.arch!r} from its record for a "
                             f"scratch student (parameters differ: {diff})")
    device = next(iter(model.parameters())).device
    return fresh.to(device).eval()


def prefetch(names: list[str]) -> list[str]:
    """Download timm pretrained weights into the local Hugging Face cache (needs network).

    Run this once on a machine with internet access; later runs load the cached weights offline.
    """
    done = []
    for name in names:
        check_timm_name(name, pretrained=True)
        timm.create_model(name, pretrained=True)
        done.append(name)
    return done
