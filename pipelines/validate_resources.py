"""Checks of a study against the machine and the file system, before Ray starts or anything is written.

Why a module of its own: :mod:`pipelines.validate` checks the study against itself (ids, configs, plans);
these checks ask the machine instead: is there a GPU for ``study.device = "cuda"``, do the per-job
resources fit a local instance (a job that asks for more is otherwise "skipped" after Ray started), can
the decoded-image cache be written (otherwise the first job that builds it fails, after the zoo trained),
does a dataset root exist, is a CLIP folder there. Each problem is a
:class:`~zoo_study.config.ConfigError` with one line (the CLI exits with code 2). Checks that depend on
what a cluster has are left to the cluster when the run joins one (``--address``, ``RAY_ADDRESS``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from zoo_study.config import ConfigError, StudyConfig
from zoo_study.data.spec import IMAGENET_ENV, DataSpec, resolved_cache_dir

__all__ = ["runs_locally", "check_machine", "check_device", "check_job_resources", "check_cache_kind",
           "check_cache_dir", "check_imagefolder", "check_text_encoder"]

CLUSTER_HINT = "or give --address of a Ray cluster that has them"


def runs_locally(address: str | None) -> bool:
    """Whether the run uses this machine alone: no Ray (``"local"``) or a Ray instance it starts itself
    (no address, no ``RAY_ADDRESS``). Joining a cluster, the cluster's nodes decide what fits."""
    return address == "local" or (not address and not os.environ.get("RAY_ADDRESS"))


def check_device(cfg: StudyConfig, local: bool) -> None:
    """``study.device = "cuda"`` on a machine without a usable GPU fails in the first job otherwise."""
    if cfg.study.device != "cuda" or not local:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("study.device='cuda' but this machine has no usable CUDA GPU "
                          "(torch.cuda.is_available() is false); valid here: \"auto\" or \"cpu\", "
                          f"{CLUSTER_HINT}")


def check_job_resources(cfg: StudyConfig, local: bool) -> None:
    """Per-job CPUs / GPUs beyond what a local run has: Ray would skip every such job as infeasible."""
    if not local:
        return
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    where = "ray.num_cpus" if cfg.ray.num_cpus else "os.cpu_count()"
    if cfg.ray.cpus_per_job > cpus:
        raise ConfigError(f"ray.cpus_per_job={cfg.ray.cpus_per_job:g} is more than this run's {cpus} CPU(s) "
                          f"({where}); valid: a number in (0, {cpus}], {CLUSTER_HINT}")
    if cfg.ray.gpus_per_job > 0:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if cfg.ray.gpus_per_job > gpus:
            raise ConfigError(f"ray.gpus_per_job={cfg.ray.gpus_per_job:g} is more than this machine's {gpus} "
                              f"GPU(s) (torch.cuda.device_count()); valid: 0 to {gpus}, {CLUSTER_HINT}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_cache_kind(data: DataSpec, key: str = "data") -> None:
    """Only ImageFolder data is cached: a cache_dir with generated data would be ignored without a word."""
    if data.cache_dir is not None and data.kind != "imagefolder":
        raise ConfigError(f"{key}.cache_dir={data.cache_dir!r} is set but {key}.kind={data.kind!r}: only ImageFolder "
                          f"data is cached (generated images are made in memory); unset {key}.cache_dir or use "
                          "kind 'imagefolder'")


def check_cache_dir(data: DataSpec, key: str = "data") -> None:
    """The decoded-image cache folder, or its nearest existing parent, is a folder this process can write
    in (a probe file is created and removed there; nothing else is written). The folder is node-local: on
    a cluster the workers' disks count, so this is checked for local runs only (:func:`check_machine`)."""
    cache = resolved_cache_dir(data)  # None when off ("none") or not ImageFolder data; else the default too
    if cache is None:
        return
    shown = (f"{key}.cache_dir={data.cache_dir!r}" if data.cache_dir is not None
             else f"the image cache folder {cache!r} ({key}.cache_dir unset: $ZOO_STUDY_CACHE or the default)")
    path = Path(cache)
    probe_in = _nearest_existing(path.absolute())
    if not probe_in.is_dir():
        raise ConfigError(f"{shown}: {probe_in} is a file, not a folder; valid: a writable local folder "
                          "(created when missing)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".zoo-study-probe-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{shown}: cannot write in {probe_in} ({err.strerror or err}); valid: a writable "
                          "local folder, or \"none\" to decode images on the fly") from None


def check_imagefolder(data: DataSpec, key: str = "data") -> None:
    """An ImageFolder dataset has a root folder with ``train/`` and ``val/`` class folders."""
    if data.kind != "imagefolder":
        return
    root_value = data.root or os.environ.get(IMAGENET_ENV)
    if not root_value:
        raise ConfigError(f"{key}.kind='imagefolder' needs a dataset root: set {key}.root in the config "
                          f"or {IMAGENET_ENV}")
    root = Path(root_value).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}.root={str(root)!r} is not a folder; expected a folder with train/ and val/ "
                          f"class folders (or set {IMAGENET_ENV})")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise ConfigError(f"{key}.root={str(root)!r} has no {' or '.join(f'{m}/' for m in missing)} folder; "
                          f"expected train/ and val/ with one sub-folder per class")


def check_text_encoder(cfg: StudyConfig) -> None:
    """``semantics.encoder = "clip:<folder>"`` is loaded offline in the semantics job: the folder must hold
    a saved model (its ``config.json``) and the transformers package must be installed."""
    enc = cfg.semantics.encoder
    if not enc.startswith("clip:"):
        return
    folder = Path(enc[len("clip:"):]).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"semantics.encoder={enc!r}: {str(folder)!r} is not a local CLIP model folder (no "
                          "config.json; nothing is downloaded); valid: \"lexical\" or \"clip:<folder written by "
                          "transformers' save_pretrained>\"")
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(f"semantics.encoder={enc!r} needs the transformers package, which is not installed; "
                          "valid without it: \"lexical\"")


def check_machine(cfg: StudyConfig, address: str | None) -> None:
    """What this machine must have for a local run (nothing when the run joins a cluster): a GPU for
    ``study.device = "cuda"``, the per-job CPUs and GPUs, writable image-cache folders."""
    if not runs_locally(address):
        return
    check_device(cfg, True)
    check_job_resources(cfg, True)
    check_cache_dir(cfg.data)
    if cfg.zoo.adapt.enabled:
        check_cache_dir(cfg.zoo.adapt.pretrain_data, "zoo.adapt.pretrain_data")
