"""Make ``torchvision`` (and so ``timm``) importable next to a CPU-only torch build.

Why: the pinned torchvision 0.28.0 wheel is a CUDA build. Under the CPU torch 2.13.0 build its C
extension (``torchvision._C``) fails to load, and ``import torchvision`` then dies in
``_meta_registrations`` because ``torchvision::nms`` / ``torchvision::qnms`` were never defined.
zoo-study never calls those detection ops, so declaring their schemas (no kernels) is enough for the
import to succeed. This runs only when the C extension really failed to load; on a machine where
torchvision's ops load (a matching CUDA box), it does nothing.

Keep this the only place that knows about the problem. ``zoo_study/__init__.py`` calls
:func:`install_import_hook`, which adds a tiny ``sys.meta_path`` finder: the check runs the moment
torchvision is first imported (directly or through timm), so importing zoo_study stays cheap (no torch
import) for code that never touches models, such as the store and the analysis layer.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_FRAGMENT = None  # keeps the torch.library.Library alive for the life of the process
MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _torchvision_ops_load() -> bool:
    """Try to load torchvision's C extension the way torchvision does; True when it loads."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch
    pkg_dir = list(spec.submodule_search_locations)[0]
    candidates = glob.glob(os.path.join(pkg_dir, "_C*.so")) + glob.glob(os.path.join(pkg_dir, "_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError, ImportError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Declare the missing torchvision op schemas if (and only if) its C ops cannot load.

    Returns True when the shim was installed, False when nothing was needed.
    """
    global _FRAGMENT
    if "torchvision" in sys.modules or _FRAGMENT is not None:
        return _FRAGMENT is not None
    if _torchvision_ops_load():
        return False
    import torch

    _FRAGMENT = torch.library.Library("torchvision", "FRAGMENT")
    for schema in MISSING_OP_SCHEMAS:
        _FRAGMENT.define(schema)
    return True


class _TorchvisionHook:
    """Meta-path finder that runs the check just before the first ``import torchvision``."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib protocol
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            ensure_torchvision_importable()
        return None  # let the normal finders import it


def install_import_hook() -> None:
    """Arrange for :func:`ensure_torchvision_importable` to run before torchvision's first import."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
