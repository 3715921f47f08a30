"""The micro study the pipeline tests run end to end: 6 generated classes at 16 px, two embedded models
trained for a fifth of their recipe (seconds on 2 cores). Tests append their own sections."""

from __future__ import annotations


def micro_study(name: str) -> str:
    """The [study], [data.generated] and [zoo] sections; ``{root}`` is left for ``str.format``."""
    return f"""
[study]
name = "{name}"
results_root = "{{root}}"

[data.generated]
num_superclasses = 2
classes_per_superclass = 3
image_size = 16
n_train = 240
n_eval = 120

[zoo]
embedded = ["resnet10t_w16", "mixer_p8"]
epochs_scale = 0.2
"""
