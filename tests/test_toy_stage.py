"""A stage declared in one module (this one: its planner, its executor and its :class:`Stage` record) runs
like the study's own through ``zoo-study run`` and ``zoo-study status``: planned from the Study, executed
(serial backend, ``--address local``), written, counted done, skipped on a rerun; and gone once unregistered."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.jobs import Job, JobContext
from pipelines.stages import Stage, parse_stages, register_stage
from zoo_study.config import ConfigError

RAN: list[str] = []  # job ids the toy executor ran, in this process


def plan_toy(study) -> list[Job]:
    """One job per trained model of the Study: a line naming it and the study seed."""
    return [Job("toy", {"model": m.model_id, "seed": study.cfg.study.seed}, {"note": f"toy/{m.model_id}.txt"},
                name=f"toy note of {m.model_id}") for m in study.models if m.trained]


def toy_job(spec: dict, inputs: dict[str, bytes], ctx: JobContext) -> dict[str, str]:
    RAN.append(ctx.job_id)
    return {"note": f"{spec['model']} seed {spec['seed']}\n"}


TOY = Stage("toy", plan_toy, toy_job)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def _row(out: str, stage: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [stage])


def test_a_stage_declared_in_one_module_is_planned_run_counted_and_skipped(tmp_path: Path, capsys):
    root = tmp_path / "root"
    config = tmp_path / "toy.toml"
    config.write_text(f'[study]\nresults_root = "{root}"\nseed = 7\n[zoo]\nembedded = ["resnet10t_w16", "mixer_p8"]\n'
                      "[semantics]\nenabled = false\n[transfer]\nenabled = false\n")
    run = [str(config), "--stage", "toy", "--address", "local", "--no-progress"]
    RAN.clear()
    with register_stage(TOY):
        code, out = _cli(capsys, "run", *run, "--dry-run")
        assert code == 0 and _row(out, "toy") == ["toy", "2", "0", "2"]  # planned: two models, none done
        code, out = _cli(capsys, "run", *run)
        assert code == 0 and len(RAN) == 2  # executed, once per job
        assert (root / "toy/resnet10t_w16.txt").read_text() == "resnet10t_w16 seed 7\n"  # written
        assert (root / "toy/mixer_p8.txt").read_text() == "mixer_p8 seed 7\n"
        assert _row(out, "toy")[:4] == ["toy", "2", "0", "2"]  # total, done before, ran
        code, out = _cli(capsys, "status", str(config))
        assert code == 0 and _row(out, "toy")[:4] == ["toy", "2", "2", "0"]  # counted done
        code, out = _cli(capsys, "run", *run)
        assert code == 0 and len(RAN) == 2  # skipped on rerun: nothing executed again
        assert _row(out, "toy")[:4] == ["toy", "2", "2", "0"]
    with pytest.raises(ConfigError, match="unknown stage"):  # unregistered: not a stage of any study
        parse_stages("toy")
