"""Feature maps in the model's declared format (issue 21 item 2), on real timm architectures at tiny widths,
random init, 1,000 classes and 224 px: the last map is NCHW with C = num_features on the patch grid
(Swin's NHWC permuted, prefix tokens dropped by count, PiT's grid rather than its class / distillation
token); Talking Models' split points are modules that really run; Talking Models and AMTML-KD steps run
with a Swin student and teacher; validation refuses what cannot be read, in one line with exit code 2.

Grids by hand at 224 px: stride-32 models (ResNet, ConvNeXt, Swin, Twins, CoaT, PiT: 224 / 32) end on
7 x 7; patch-16 ViT / DeiT on 14 x 14; VOLO (patch 8, one 2x downsample) on 14 x 14.
"""

from __future__ import annotations

import pytest
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm
from timm.models.volo import VOLO

from zoo_study.transfer.loop import forward_levels, forward_parts

torch.set_num_threads(1)

SIZE = 224


def _build(name: str) -> torch.nn.Module:
    kw = dict(num_classes=1000)
    if name == "swin":
        return timm.create_model("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1),
                                 num_heads=(1, 1, 1, 1), **kw)
    if name == "volo":
        return VOLO(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 1, 1, 1), stem_hidden_dim=8, **kw)
    if name in ("twins_svt", "twins_pcpvt"):  # depth 2: a stage ends on its last block
        extra = {"wss": (7, 7, 7, 7)} if name == "twins_svt" else {}
        return timm.create_model(f"{name}_small", embed_dims=(8, 16, 32, 64), depths=(2, 2, 2, 2),
                                 num_heads=(1, 1, 1, 1), **extra, **kw)
    if name == "coat_lite":
        return timm.create_model("coat_lite_mini", embed_dims=(8, 16, 32, 64), serial_depths=(1, 1, 1, 1), **kw)
    if name in ("pit", "pit_distilled"):
        arch = "pit_ti_224" if name == "pit" else "pit_ti_distilled_224"
        return timm.create_model(arch, base_dims=(8, 8, 8), heads=(1, 1, 1), depth=(1, 1, 1), **kw)
    if name == "deit_distilled":
        return timm.create_model("deit_tiny_distilled_patch16_224", embed_dim=16, depth=2, num_heads=1, **kw)
    if name == "resnet":
        return timm.create_model("resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), **kw)
    if name == "convnext":
        return timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), **kw)
    if name == "vit":
        return timm.create_model("vit_tiny_patch16_224", embed_dim=16, depth=2, num_heads=1, **kw)
    raise KeyError(name)


GRIDS = {"swin": 7, "volo": 14, "twins_svt": 7, "twins_pcpvt": 7, "coat_lite": 7, "pit": 7, "pit_distilled": 7,
         "deit_distilled": 14, "resnet": 7, "convnext": 7, "vit": 14}
_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = _build(name).eval()
    return _MODELS[name]


def _x(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _expected_map(name: str, m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last map by hand from each model's own layout (what timm documents for it)."""
    f = m.forward_features(x)
    b, side = x.shape[0], GRIDS[name]
    if name == "swin":  # NHWC (timm: output_fmt = "NHWC")
        return f.permute(0, 3, 1, 2)
    if f.dim() == 4:
        return f
    if name.startswith("pit"):  # forward_features is the class (+ distillation) token: the grid is the last stage's
        return m.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
    prefix = {"deit_distilled": 2, "vit": 1, "volo": 1, "coat_lite": 1}.get(name, 0)
    assert f.shape[1] == prefix + side * side
    return f[:, prefix:].transpose(1, 2).reshape(b, -1, side, side)


@pytest.mark.parametrize("name", list(GRIDS))
def test_last_map_is_nchw_with_num_features_channels_on_the_patch_grid(name):
    m, x = model(name), _x()
    with torch.no_grad():
        logits, _, grid = forward_parts(m, x, grid=True)
        side = GRIDS[name]
        assert tuple(grid.shape) == (2, m.num_features, side, side)
        assert torch.allclose(logits, m(x), atol=1e-5)  # the head saw the model's own features
        assert torch.allclose(grid, _expected_map(name, m, x), atol=1e-6)


@pytest.mark.parametrize("name", ["swin", "resnet", "twins_svt", "twins_pcpvt"])
def test_pooled_map_is_timms_own_pooled_pre_logits(name):
    """Where the head is a plain average pool (no norm after it), the map's spatial mean is the pre-logits."""
    m, x = model(name), _x()
    with torch.no_grad():
        _, _, grid = forward_parts(m, x, grid=True)
        pre = m.forward_head(m.forward_features(x), pre_logits=True)
    assert torch.allclose(grid.mean((2, 3)), pre, atol=1e-5)


def test_levels_are_nchw_grids_and_the_last_map_follows_the_declared_layout():
    m, x = model("swin"), _x()
    with torch.no_grad():
        logits, _, last, levels = forward_levels(m, x, 2)
    assert [tuple(g.shape[1:]) for g in levels] == [(64, 14, 14), (128, 7, 7)]
    assert tuple(last.shape[1:]) == (128, 7, 7) and torch.allclose(logits, m(x), atol=1e-5)


@pytest.mark.parametrize("name,split", [("swin", 1), ("volo", 1), ("twins_svt", 1), ("twins_pcpvt", 2),
                                        ("coat_lite", 1), ("pit", 1), ("pit_distilled", 1), ("resnet", 1),
                                        ("vit", 1), ("deit_distilled", 1), ("convnext", 2)])
def test_split_points_are_modules_that_run_and_give_the_level(name, split):
    """The hooked module runs once in forward_features and its output, read in its format, is the level of
    forward_intermediates; putting that grid back leaves a layout-only state unchanged."""
    from zoo_study.transfer.feature_maps import split_point
    from zoo_study.transfer.talking import grid_to_native

    m, x = model(name), _x(1)
    point = split_point(m, x, split)
    seen = []
    handle = point.module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            m.forward_features(x)
    finally:
        handle.remove()
    with torch.no_grad():
        levels = m.forward_intermediates(x, intermediates_only=True)
    assert len(seen) == 1
    state = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    assert point.level == len(levels) - 1 - split
    assert torch.allclose(point.fmt.grid(state), levels[point.level], atol=1e-5)
    back = grid_to_native(point.fmt.grid(state), seen[0], point.fmt)
    back = back[0] if isinstance(back, tuple) else back
    n = point.fmt.prefix
    assert torch.equal(back[:, n:] if n else back, state[:, n:] if n else state)


def test_a_split_deeper_than_the_levels_names_the_valid_ones():
    from zoo_study.transfer.feature_maps import MapsUnreadable, split_point

    with pytest.raises(MapsUnreadable, match=r"split = 2: .* has 2 feature level\(s\).*valid: 0 to 1"):
        split_point(model("vit"), _x(1), 2, "teacher")


def test_a_state_vector_reaches_swins_nhwc_head_exactly():
    from zoo_study.transfer.feature_maps import model_maps
    from zoo_study.transfer.talking import head_on_vector

    m, x = model("swin"), _x(1)
    v = torch.randn(3, m.num_features)
    with torch.no_grad():
        out = head_on_vector(m, v, model_maps(m, x))
        assert torch.allclose(out, m.head.fc(v), atol=1e-5)  # Swin's head: NHWC average pool, then fc


def _step(method: str, params: dict, student, teacher, x) -> tuple[dict[str, float], object]:
    """One objective step the way the loop runs it (setup from the loop's probes, grids from forward_parts)."""
    from zoo_study.methods import get_method
    from zoo_study.methods.registry import ObjectiveInputs, SetupContext
    from zoo_study.transfer.loop import forward_levels, forward_parts

    spec = get_method(method)
    hp = spec.resolve_params(params)
    shapes = lambda: (tuple(forward_parts(student, x[:1], grid=True)[2].shape[1:]),  # noqa: E731
                      [tuple(forward_parts(teacher, x[:1], grid=True)[2].shape[1:])])
    levels = lambda: [tuple(g.shape[1:]) for g in forward_levels(student, x[:1], 1)[3]]  # noqa: E731
    with torch.no_grad():
        ctx = SetupContext(model=student, params=hp, n_data=len(x), device=torch.device("cpu"),
                           feature_dims=lambda: (0, 0), map_shapes=shapes, teachers=[teacher], level_shapes=levels,
                           sample_inputs=lambda: (x[:2], [x[:2]]), native_shapes=lambda: (
                               tuple(student.forward_features(x[:1]).shape[1:]),
                               [tuple(teacher.forward_features(x[:1]).shape[1:])]))
        state = spec.make_state(ctx)
    student.train()
    try:
        with torch.no_grad():
            t_logits, _, t_map = forward_parts(teacher, x, grid=True)
        if spec.needs_levels:
            s_logits, _, s_map, s_levels = forward_levels(student, x, 1)
        else:
            (s_logits, _, s_map), s_levels = forward_parts(student, x, grid=True), None
        inp = ObjectiveInputs(student=s_logits, teachers=t_logits.unsqueeze(0), labels=torch.tensor([3, 999]),
                              temperature=1.0, student_map=s_map, teacher_maps=[t_map], student_levels=s_levels,
                              teacher_inputs=[x], state=state, generator=torch.Generator().manual_seed(0))
        out = spec.fn(inp, hp)
        out.loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert torch.isfinite(out.loss) and grads and any(float(g.abs().sum()) > 0 for g in grads)
        return {k: float(v) for k, v in out.logs.items()}, state
    finally:
        state.close()
        student.zero_grad(set_to_none=True)
        student.eval()


@pytest.mark.parametrize("split", [0, 1])
def test_talking_models_runs_with_a_swin_student_and_teacher(split):
    student, teacher = model("swin"), _build_teacher("swin")
    logs, _ = _step("talking_models", {"split": split, "msg_dim": 8}, student, teacher, _x())
    assert set(logs) == {"ce", "interact", "mc", "sc"}


def test_amtml_runs_with_a_swin_student_and_teacher_on_real_channels():
    from zoo_study.transfer.amtml import AMTMLModule  # noqa: F401

    student, teacher = model("swin"), _build_teacher("swin")
    logs, _ = _step("amtml_kd", {}, student, teacher, _x())
    assert set(logs) == {"kl", "ce", "angle", "hint"}


def test_amtml_sizes_its_instance_vector_and_regressors_from_the_real_channels():
    from zoo_study.transfer.amtml import setup_amtml
    from zoo_study.methods.registry import SetupContext

    student, teacher, x = model("swin"), _build_teacher("swin"), _x(1)
    shapes = lambda: (tuple(forward_parts(student, x, grid=True)[2].shape[1:]),  # noqa: E731
                      [tuple(forward_parts(teacher, x, grid=True)[2].shape[1:])])
    with torch.no_grad():
        state = setup_amtml(SetupContext(model=student, params={"groups": 0}, n_data=1, device="cpu",
                                         feature_dims=lambda: (0, 0), map_shapes=shapes))
    assert state.module.theta.shape == (1, 128)  # d = Swin's 128 channels, not its 7 rows
    assert (state.module.regressors[0].in_channels, state.module.regressors[0].out_channels) == (128, 128)


def _build_teacher(name: str) -> torch.nn.Module:
    torch.manual_seed(5)
    return _build(name).eval()


# --------------------------------------------------------------------------------------------- validation
def _zoo_cfg(tmp_path, arch: str, kwargs: dict, methods: list[str], hparams: dict | None = None, size: int | None = 32):
    from zoo_study.config import validate_config

    odd = {"id": "odd", "source": "random", "arch": arch, "model_kwargs": kwargs, "num_classes": 6}
    if size:
        odd["data_config"] = {"input_size": [3, size, size]}
    raw = {"study": {"results_root": str(tmp_path)},
           "zoo": {"embedded": ["resnet10t_w16"], "models": [odd]},
           "transfer": {"enabled": True, "pairs": "explicit", "explicit": [["resnet10t_w16", "odd"]],
                        "methods": methods, "hparams": hparams or {}}}
    return validate_config(raw)


def test_validation_refuses_a_model_whose_maps_cannot_be_read(tmp_path):
    """A token model whose patch grid timm does not declare (no forward_intermediates, no prefix count)."""
    from pipelines.validate import validate_study
    from zoo_study.config import ConfigError
    from timm.models import register_model

    class NoGrid(torch.nn.Module):
        num_classes, num_features = 6, 8

        def __init__(self, **_):
            super().__init__()
            self.embed = torch.nn.Linear(3, 8)
            self.head = torch.nn.Linear(8, 6)
            self.pretrained_cfg = {}

        def forward_features(self, x):  # 10 tokens: no square grid
            return self.embed(x.flatten(2)[:, :, :10].transpose(1, 2))

        def forward_head(self, f, pre_logits=False):
            return f.mean(1) if pre_logits else self.head(f.mean(1))

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    def zoo_test_no_grid(pretrained=False, **kw):
        return NoGrid(**kw)

    if not timm.is_model("zoo_test_no_grid"):
        register_model(zoo_test_no_grid)
    cfg = _zoo_cfg(tmp_path, "zoo_test_no_grid", {}, ["kl", "amtml_kd"])
    with pytest.raises(ConfigError) as err:
        validate_study(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "amtml_kd" in msg and "'odd'" in msg and "10 tokens" in msg
    validate_study(_zoo_cfg(tmp_path, "zoo_test_no_grid", {}, ["kl"]))  # a method without maps runs it


def test_validation_refuses_a_talking_split_deeper_than_a_models_levels(tmp_path):
    from pipelines.validate import validate_study
    from zoo_study.config import ConfigError

    vit = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 1}
    cfg = _zoo_cfg(tmp_path, "vit_tiny_patch16_224", vit, ["talking_models"], {"talking_models": {"split": 2}})
    with pytest.raises(ConfigError, match=r"talking_models needs feature maps, but model 'odd'.*split = 2.*valid: 0 to 1"):
        validate_study(cfg)
    validate_study(_zoo_cfg(tmp_path, "vit_tiny_patch16_224", vit, ["talking_models"],
                            {"talking_models": {"split": 1}}))
    # the full-size paper models that used to crash or be misread pass on the meta device
    for arch in ("swin_s3_base_224", "twins_svt_large", "coat_lite_mini", "pit_xs_distilled_224", "volo_d2_224"):
        validate_study(_zoo_cfg(tmp_path, arch, {}, ["talking_models", "amtml_kd"], {"talking_models": {"split": 1}},
                                size=None))


@pytest.mark.parametrize("student,teacher", [("twins_svt", "coat_lite"), ("coat_lite", "twins_pcpvt"),
                                             ("volo", "pit_distilled"), ("pit", "swin")])
def test_talking_models_at_split_1_runs_between_the_papers_token_architectures(student, teacher):
    """Old code: Twins' feature_info names ``block.3`` (no such attribute), CoaT's ``serial_blocks4`` never
    runs (IndexError), VOLO's stage is NHWC and PiT's last map was its class token."""
    s, t, x = model(student), _build_teacher(teacher), _x()
    logs, state = _step("talking_models", {"split": 1, "msg_dim": 8}, s, t, x)
    assert set(logs) == {"ce", "interact", "mc", "sc"}
    with torch.no_grad():  # the messages are sized by the split levels' real channels
        c_s, c_t = (m.forward_intermediates(x[:1], intermediates_only=True)[-2].shape[1] for m in (s, t))
    assert (state.module.enc_s.in_channels, state.module.enc_t.in_channels) == (c_s, c_t)


@pytest.mark.parametrize("method,hparams", [("talking_models", {"split": 1, "msg_dim": 8}), ("amtml_kd", {})])
def test_a_transfer_between_swins_runs_through_the_loop(method, hparams):
    """The whole phase (its setup probe, packed teacher forwards, steps, eval) with NHWC models at 56 px."""
    from helpers.transfer_fixtures import NUM_CLASSES, record, tiny_source
    from zoo_study.transfer import TransferConfig, run_transfer

    def swin(seed: int):
        torch.manual_seed(seed)
        return timm.create_model("swin_tiny_patch4_window7_224", img_size=56, embed_dim=16, depths=(1, 1),
                                 num_heads=(1, 1), num_classes=NUM_CLASSES).eval()

    student, teacher = swin(0), swin(1)
    cfg = TransferConfig(method=method, hparams=hparams, epochs=1, batch_size=30, transfer_fraction=0.2, seed=2,
                         base_lr=0.05, mode="parallel" if method == "amtml_kd" else "single")
    res = run_transfer(student, record("swin_s", 56), [(teacher, record("swin_t", 56))], tiny_source(), cfg,
                       job_id="swin")
    logs = res.info["phases"][0]["epoch_logs"][0]
    assert logs and all(v == v for v in logs.values())  # finite means, no NaN
    assert set(res.model.state_dict()) == set(student.state_dict())


def test_a_map_whose_declared_layout_does_not_fit_its_levels_is_refused_not_misread():
    """Swin declaring NCHW would read (7, 7, 128) as 7 channels on a 7x128 grid; its levels say 7x7."""
    from zoo_study.transfer.feature_maps import maps_problem

    liar = _build("swin").eval()
    liar.output_fmt = "NCHW"
    why = maps_problem(liar, (3, SIZE, SIZE))
    assert why is not None and "only the other layout fits" in why and "7x7" in why
    assert maps_problem(_build("swin").eval(), (3, SIZE, SIZE), split=1) is None
