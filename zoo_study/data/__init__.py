"""Dataset sources, stratified subsets, transfer augmentation and per-model preprocessing.

Every source yields *raw* images: uint8 tensors [3, R, R] at one common raw size R. Each model then
turns the same raw batch into its own input (resolution, crop, interpolation, mean/std) with
:class:`ModelPreprocess`, so a teacher and a student always look at the same picture.
"""

from zoo_study.data.base import ImageSplit, DataSource, raw_loader
from zoo_study.data.subsets import stratified_indices
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.data.augment import TransferAugment
from zoo_study.data.generated import GeneratedSpec, make_generated
from zoo_study.data.imagefolder import ImageFolderSpec, make_imagefolder
from zoo_study.data.sources import DataSpec, load_source

__all__ = [
    "ImageSplit",
    "DataSource",
    "raw_loader",
    "stratified_indices",
    "ModelPreprocess",
    "TransferAugment",
    "GeneratedSpec",
    "make_generated",
    "ImageFolderSpec",
    "make_imagefolder",
    "DataSpec",
    "load_source",
]
