"""A local study starts a Ray instance of its own: it never joins a cluster somebody's `ray start` left
recorded on this machine (Ray's ``ray.init()`` with no address joins the one in
/tmp/ray/ray_current_cluster; a claims run joined a test's two-node cluster that way and lost its jobs
when that cluster went away)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import ray._private.utils as utils
    import ray._private.services as services
    recorded = "127.0.0.1:9"            # a cluster recorded by someone's `ray start` (nothing listens there)
    utils.read_ray_address = lambda temp_dir=None: recorded
    services.find_bootstrap_address = lambda temp_dir=None: recorded
    from pipelines.backends import ensure_ray
    import ray
    try:
        print(ensure_ray(num_cpus=1))
        print("joined", ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
""")


def test_a_local_study_starts_its_own_instance_when_a_cluster_is_recorded_on_the_machine():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Ray with 1 node(s), 1 CPU(s)" in out.stdout
    joined = out.stdout.split("joined", 1)[1].strip()
    assert joined and "127.0.0.1:9" not in joined
