"""zoo-study: find and transfer complementary knowledge between pretrained image classifiers.

The library layer: data sources, the model zoo, prediction passes, pair scoring, transfer methods and
the Parquet store. No Ray and no plotting here, so every piece runs in a notebook on a CPU.
"""

from zoo_study import _compat

_compat.install_import_hook()  # torchvision under CPU torch: see _compat

__version__ = "0.1.0"
