"""Dataset sources, stratified subsets, transfer augmentation and per-model preprocessing.

Generated data yields *raw* images: uint8 tensors [3, R, R] at one common raw size R, which each model
turns into its own input (resolution, crop, interpolation, mean/std) with :class:`ModelPreprocess`.
ImageFolder data is read at each model's own timm eval geometry (:func:`cached_split`: from the
decoded-image cache, or decoded on the fly in DataLoader workers), so every model's input is timm's
``create_transform`` output exactly; a teacher and a student always look at the same picture.

Modules, bottom up (no module imports one above it): ``spec`` (torch-free config), ``preprocess``,
``geometry`` (geometries, Views), ``decode`` (PIL decoding and rendering), ``base`` (ImageSplit,
raw_loader), ``index`` (the file index), ``cache_layout`` / ``cache_read`` / ``cache`` (the cache),
``imagefolder`` / ``generated`` / ``sources`` (the sources), ``prepare`` (the driver's data step).

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
    "resolve_data_paths": "zoo_study.data.spec",
    "prepare_images": "zoo_study.data.prepare",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports("zoo_study.data", _EXPORTS)
