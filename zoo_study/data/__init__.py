"""Dataset sources, stratified subsets, transfer augmentation and per-model preprocessing.

Every source yields *raw* images: uint8 tensors [3, R, R] at one common raw size R. Each model then
turns the same raw batch into its own input (resolution, crop, interpolation, mean/std) with
:class:`ModelPreprocess`, so a teacher and a student always look at the same picture.

Names are imported lazily (PEP 562): the specs (:mod:`zoo_study.data.spec`) need no torch, so the
study config can use them in a process that never loads data.
"""

from __future__ import annotations

from zoo_study._lazy import lazy_exports

_EXPORTS = {
    "ImageSplit": "zoo_study.data.base",
    "DataSource": "zoo_study.data.base",
    "raw_loader": "zoo_study.data.base",
    "stratified_indices": "zoo_study.data.subsets",
    "ModelPreprocess": "zoo_study.data.preprocess",
    "TransferAugment": "zoo_study.data.augment",
    "GeneratedSpec": "zoo_study.data.spec",
    "DataSpec": "zoo_study.data.spec",
    "make_generated": "zoo_study.data.generated",
    "ImageFolderSpec": "zoo_study.data.imagefolder",
    "make_imagefolder": "zoo_study.data.imagefolder",
    "load_source": "zoo_study.data.sources",
    "cached_split": "zoo_study.data.cache",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports("zoo_study.data", _EXPORTS)
