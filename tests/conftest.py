"""Shared test setup: small thread pools (the CI machine has 2 cores) and no network."""

import atexit
import os
import shutil
import tempfile

from helpers.runner_executors import importable_by_workers

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("RAY_ADDRESS", None)
# ImageFolder studies cache decoded images by default (~/.cache/zoo-study/images): never in the tester's home
os.environ["ZOO_STUDY_CACHE"] = tempfile.mkdtemp(prefix="zoo-study-test-cache-")
atexit.register(shutil.rmtree, os.environ["ZOO_STUDY_CACHE"], True)
# the runner's test executors (tests/helpers/runner_executors.py) are imported by Ray workers by module path
importable_by_workers()
