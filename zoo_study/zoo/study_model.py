"""A model of the study, typed by how it is made: trained from an embedded recipe, named by a
:class:`~zoo_study.zoo.ref.ModelRef` (timm or a local file), randomly initialised (the noise floor), or
adapted from one of those to other data.

Why one type per kind: the planner, the worker, the memory estimate and the map check all ask the same
questions of a model (does its zoo job write weights? what does it build into? what architecture and
input size?), and each kind answers them in its own class instead of in a ``kind`` string dispatched in
four modules. :meth:`StudyModel.payload` is what a job spec (and so its id) holds, unchanged since the
first release: ``{"model_id", "kind", "spec"}``; :func:`study_model` reads it back in the worker.

Torch-free at import: building and training import torch and timm inside the methods, in workers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from zoo_study.store import ResultsLayout
from zoo_study.zoo.ref import ModelRef

__all__ = ["StudyModel", "EmbeddedModel", "RefModel", "RandomModel", "AdaptedModel", "study_model", "weights_file"]

LOG = logging.getLogger("zoo_study.pipeline")
SourceOf = Callable[[Mapping[str, Any], bool], Any]
"""``source_of(data, study)``: the dataset of a dumped data spec (``study``: it is the study's own data, whose
root the driver resolved; else another dataset's, e.g. adapt data)."""


@contextmanager
def weights_file(blob: bytes) -> Iterator[str]:
    """Safetensors bytes as a temporary file, for loaders that take a path."""
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        yield path
    finally:
        os.unlink(path)


@dataclass(frozen=True, eq=False)
class StudyModel:
    """One model of the study: its id and its kind's spec (a plain JSON dict, what the job id hashes)."""

    model_id: str
    spec: Mapping[str, Any]
    kind: ClassVar[str] = ""
    has_weights_file: ClassVar[bool] = False  # its zoo job writes zoo/weights/<id>.safetensors
    trained: ClassVar[bool] = True  # False for the noise-floor teachers (not scored as a student or teacher)

    def payload(self) -> dict[str, Any]:
        """What a job spec holds for this model (and its id hashes)."""
        return {"model_id": self.model_id, "kind": self.kind, "spec": dict(self.spec)}

    def ref(self, num_classes: int | None, checkpoint: str | None = None) -> ModelRef:
        """The :class:`ModelRef` the loader builds this model from (``checkpoint``: its weights file)."""
        raise NotImplementedError

    def arch_args(self) -> tuple[str | None, dict[str, Any], Sequence[int] | None]:
        """(timm arch, model kwargs, input size or None for timm's default), for size estimates and probes."""
        raise NotImplementedError

    def build(self, inputs: Mapping[str, bytes], num_classes: int, device: str):
        """(model, CatalogRecord) in a worker, from the job's input bytes (its weights file, if any)."""
        from zoo_study.zoo.loading import load_model

        if not self.has_weights_file:
            return load_model(self.ref(num_classes), device=device)
        key = str(ResultsLayout("").weights(self.model_id))
        with weights_file(inputs[key]) as path:
            model, record = load_model(self.ref(num_classes, path), device=device)
        record.checkpoint = key
        return model, record

    def make_weights(self, source_of: SourceOf, study_data: Mapping[str, Any], device: str) -> tuple[bytes, float]:
        """Its zoo job's weights (safetensors bytes) and the seconds they took; only with a weights file.
        ``study_data``: the study's dumped data spec (the job spec's ``data``)."""
        raise NotImplementedError(f"{self.kind} model {self.model_id!r} has no weights of its own")


class EmbeddedModel(StudyModel):
    """An embedded recipe (``spec``: the recipe's fields and ``epochs_scale``), trained by its zoo job."""

    kind = "embedded"
    has_weights_file = True

    def ref(self, num_classes, checkpoint=None):
        return ModelRef(self.model_id, source="embedded", checkpoint=checkpoint, num_classes=num_classes)

    def arch_args(self):
        size = self.spec["input_size"]
        return self.spec["arch"], dict(self.spec.get("model_kwargs") or {}), [3, size, size]

    def train(self, source, device) -> tuple[bytes, dict[str, Any]]:
        """Train the recipe on ``source``: (safetensors bytes, train_recipe's info)."""
        from zoo_study.zoo.recipes import Recipe
        from zoo_study.zoo.train import train_recipe

        rspec = dict(self.spec)
        scale = float(rspec.pop("epochs_scale", 1.0))
        recipe = Recipe.from_dict(rspec)
        LOG.info("training embedded model %s (%s) on %s", recipe.model_id, recipe.arch, source.name)
        return train_recipe(recipe, source, device=device, epochs_scale=scale)

    def make_weights(self, source_of, study_data, device):
        blob, info = self.train(source_of(study_data, True), device)
        return blob, float(info["train_seconds"])


class RefModel(StudyModel):
    """A ``[[zoo.models]]`` entry or a paper model (``spec``: the entry, a :class:`ModelRef` dump)."""

    kind = "ref"

    def ref(self, num_classes, checkpoint=None):
        return ModelRef.model_validate({**self.spec, "num_classes": num_classes})

    def arch_args(self):
        arch, kwargs = self.spec.get("arch"), dict(self.spec.get("model_kwargs") or {})
        data = dict(self.spec.get("data_config") or {})
        if self.spec.get("checkpoint") and not arch:
            from zoo_study.zoo.loading import read_checkpoint_metadata

            try:
                meta = read_checkpoint_metadata(self.spec["checkpoint"])
            except Exception:  # a bad file is the loader's to report
                return None, {}, None
            arch, kwargs = meta.get("arch"), {**meta.get("model_kwargs", {}), **kwargs}
            data = {**meta.get("data_config", {}), **data}
        return arch, kwargs, data.get("input_size")


class RandomModel(StudyModel):
    """A randomly initialised architecture, seeded: the noise-floor teacher (``spec``: arch, model_kwargs,
    data_config, seed)."""

    kind = "random"
    trained = False

    def ref(self, num_classes, checkpoint=None):
        s = self.spec
        return ModelRef(self.model_id, source="random", arch=s["arch"], model_kwargs=dict(s.get("model_kwargs") or {}),
                        num_classes=num_classes, data_config=s.get("data_config"), seed=int(s.get("seed", 0)))

    def arch_args(self):
        return (self.spec["arch"], dict(self.spec.get("model_kwargs") or {}),
                (self.spec.get("data_config") or {}).get("input_size"))


class AdaptedModel(StudyModel):
    """A model adapted to other data by its zoo job (Figs 9, 10; zoo_study/zoo/adapt.py): ``spec`` holds its
    base model's payload, the adapt settings and the data it pretrains on and adapts to."""

    kind = "adapted"
    has_weights_file = True

    @property
    def base(self) -> StudyModel:
        return study_model(self.spec["base"])

    def ref(self, num_classes, checkpoint=None):
        return ModelRef(self.model_id, source="embedded", checkpoint=checkpoint, num_classes=num_classes)

    def arch_args(self):
        return self.base.arch_args()  # adapting keeps the architecture

    def make_weights(self, source_of, study_data, device):
        """The base model trained (embedded recipe, on its pretrain data) or loaded (timm / local), then
        adapted to its train data."""
        from zoo_study.zoo.adapt import adapt_model
        from zoo_study.zoo.loading import load_model, read_checkpoint_metadata

        spec, base = self.spec, self.base
        pre_data = spec.get("pretrain_data") or study_data
        target = source_of(spec.get("train_data") or study_data, not spec.get("train_data"))
        seconds = 0.0
        if isinstance(base, EmbeddedModel):
            pre_source = source_of(pre_data, not spec.get("pretrain_data"))
            blob, info = base.train(pre_source, device)  # its pretraining, before it is adapted
            seconds += float(info["train_seconds"])
            with weights_file(blob) as path:
                model, _ = load_model(base.ref(pre_source.num_classes, path), device=device)
                meta = read_checkpoint_metadata(path)
        else:
            model, rec = load_model(base.ref(None), device=device)
            meta = {"arch": rec.arch, "model_kwargs": {}, "data_config": rec.data_config,
                    "num_classes": rec.num_classes}
        new_head = bool(spec["new_head"]) or target.num_classes != meta.get("num_classes")
        meta = {**meta, "adapted_info": {"from": base.model_id, "dataset": spec.get("dataset"),
                                         "pretrain_data": pre_data if isinstance(base, EmbeddedModel) else None}}
        LOG.info("adapting %s to %s (%s, %s new head)", base.model_id, spec.get("dataset"), spec["settings"]["mode"],
                 "a" if new_head else "no")
        blob, info = adapt_model(model, meta["data_config"], target, spec["settings"], meta=meta, new_head=new_head,
                                 device=device)
        return blob, seconds + float(info["adapt_seconds"])


_KINDS: dict[str, type[StudyModel]] = {k.kind: k for k in (EmbeddedModel, RefModel, RandomModel, AdaptedModel)}


def study_model(payload: Mapping[str, Any]) -> StudyModel:
    """The typed model of a job spec's payload (``{"model_id", "kind", "spec"}``)."""
    try:
        cls = _KINDS[payload["kind"]]
    except KeyError:
        raise ValueError(f"model payload of kind {payload.get('kind')!r}; valid: {', '.join(_KINDS)}") from None
    return cls(payload["model_id"], payload["spec"])

