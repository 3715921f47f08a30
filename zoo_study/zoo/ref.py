"""ModelRef: how to get one model. The study config's ``[[zoo.models]]`` entries are this very type.

Why torch-free and pydantic: a wrong source, a missing checkpoint for a local model or a missing arch
is refused when the study is loaded (one line naming the model and the key), and the same object,
dumped into a job spec, is validated again in the worker that loads the model.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ModelRef", "SOURCES", "RESERVED_KWARGS"]

SOURCES = ("timm", "local", "embedded", "random")
# arguments load_model passes to timm.create_model itself: a model_kwargs entry would collide with them
RESERVED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class ModelRef(BaseModel):
    """How to get one model.

    - ``source='timm'``: ``arch`` is a timm pretrained name (``resnet50.a1_in1k``); weights from the local
      Hugging Face cache, or from ``checkpoint`` when given.
    - ``source='local'`` / ``'embedded'``: ``checkpoint`` is a local file (safetensors preferred); ``arch``
      may be omitted when the file carries zoo-study metadata.
    - ``source='random'``: a randomly initialised ``arch`` (the noise-floor teacher), seeded by ``seed``.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``{embed_dim = 16, depths = [1, 1, 1, 1]}`` for a
    narrowed Swin saved as a local checkpoint); they are part of the model's identity (job ids hash them)
    and must be JSON values; the class count is ``num_classes`` or the checkpoint's.

    In TOML the id is written ``id = "..."``; ``ModelRef("r18", source=...)`` takes it positionally.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())

    model_id: str = Field(validation_alias=AliasChoices("model_id", "id"), serialization_alias="id", min_length=1)
    source: Literal["timm", "local", "embedded", "random"] = "timm"
    arch: str | None = None
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] = {}
    num_classes: int | None = Field(None, ge=1)
    data_config: dict[str, Any] | None = None  # overrides timm's data config
    family: Literal["cnn", "transformer", "mlp"] | None = None
    reported_top1: float | None = None
    seed: int = Field(0, ge=0)

    def __init__(self, model_id: str | None = None, /, **data: Any) -> None:
        if model_id is not None:
            data["model_id"] = model_id
        super().__init__(**data)

    @model_validator(mode="after")
    def _needs(self) -> "ModelRef":
        if self.source in ("local", "embedded") and not self.checkpoint:
            raise ValueError(f"model {self.model_id!r}: source {self.source!r} needs checkpoint=<file>")
        if self.source in ("timm", "random") and not self.arch:
            raise ValueError(f"model {self.model_id!r}: source {self.source!r} needs arch=<timm name>")
        return self

    @field_validator("model_kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Refuse keys load_model sets itself, and values a job spec could not carry (non-JSON)."""
        bad = sorted(set(v) & set(RESERVED_KWARGS))
        if bad:
            raise ValueError(f"model_kwargs may not set {bad}: the loader sets {list(RESERVED_KWARGS)} "
                             "(use checkpoint on the model entry)")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model_kwargs must be JSON values (numbers, strings, lists, tables): {exc}") from None
        return v

    def __hash__(self) -> int:  # model_kwargs is a dict: hashed as its canonical JSON
        return hash((self.model_id, self.source, self.arch, self.checkpoint,
                     json.dumps(self.model_kwargs, sort_keys=True)))

    def entry_dict(self) -> dict[str, Any]:
        """The config entry as TOML would write it (``id``, no per-job fields left at their default)."""
        d = self.model_dump(mode="json", by_alias=True)
        for key in ("num_classes", "data_config"):
            if d[key] is None:
                d.pop(key)
        return d
