"""Device-correct, sync-free steps (issue 21 item 5), checked on CPU.

- precision chosen by capability: bf16 where the GPU has it, else fp16 with a GradScaler; cuDNN benchmark
  and TF32 on CUDA only; CPU unchanged;
- CRD draws its negatives on the device of its memory and never reads a value back (it runs on the
  ``meta`` device, where any host read or CPU/device mix raises);
- a member's training step reads nothing back to the host, for every registered method;
- predictions: top-k on the device (only [B, k] copied), equal to the full-softmax table, ties to the
  lower class; fp32 logits under autocast keep a near-tie that bf16 logits lose.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.precision import Precision, choose_precision, fp32_logits
from zoo_study.transfer import Runtime, TransferConfig

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- precision by capability
@pytest.fixture()
def fast_kernel_flags():
    """The three CUDA backend flags, off at the start and restored after the test."""

    def flags():
        return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32)

    def put(values):
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = values

    saved = flags()
    put((False, False, False))
    yield flags
    put(saved)


@pytest.mark.parametrize("bf16, dtype, scaler", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_precision_follows_the_gpus_bf16_support(monkeypatch, fast_kernel_flags, bf16, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_precision("cuda") == Precision("cuda", dtype, grad_scaler=scaler, fast_kernels=True)
    assert choose_precision("cuda", amp=False).amp_dtype is None  # autocast off on request
    rt = Runtime.create("cuda:0")  # a Runtime only describes the device: no CUDA call is made here
    assert (rt.amp, rt.amp_dtype, rt.grad_scaler, rt.channels_last) == (True, dtype, scaler, True)
    assert fast_kernel_flags() == (True, True, True)  # cudnn.benchmark, cudnn TF32, matmul TF32
    with warnings.catch_warnings():  # a CPU-only torch disables the scaler it builds, with a warning
        warnings.filterwarnings("ignore", "torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
        made = rt.scaler()
    assert isinstance(made, torch.amp.GradScaler) if scaler else made is None


def test_cpu_precision_is_unchanged(monkeypatch, fast_kernel_flags):
    def probe(*a, **k):
        raise AssertionError("the CUDA capability probe must not run for a CPU runtime")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", probe)
    assert choose_precision("cpu") == Precision("cpu", None)
    assert choose_precision("cpu", amp=True) == Precision("cpu", torch.bfloat16)  # asked for: bf16, no scaler
    rt = Runtime.create("cpu")
    assert (rt.amp, rt.grad_scaler, rt.channels_last, rt.scaler()) == (False, False, False, None)
    assert fast_kernel_flags() == (False, False, False)


def test_fp32_logits_keep_a_near_tie_that_bf16_logits_lose():
    """Logits 100.0 and 100.25: bf16 has 8 significant bits, its spacing at 100 is 0.5, so both round to
    100.0 and argmax picks class 0; the fp32 head keeps class 1 ahead."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()
            self.head = nn.Linear(1, 2)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(torch.tensor([100.0, 100.25]))

        def forward_features(self, x):
            return self.body(x)

        def forward_head(self, f, pre_logits=False):
            return f if pre_logits else self.head(f)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    net, x = Net(), torch.ones(1, 1)
    bf16 = Precision("cpu", torch.bfloat16)
    with bf16.autocast():
        assert net(x).dtype == torch.bfloat16 and int(net(x).argmax()) == 0  # the tie bf16 makes
    logits = fp32_logits(net, x, bf16)
    assert logits.dtype == torch.float32 and logits.tolist() == [[100.0, 100.25]] and int(logits.argmax()) == 1
    assert torch.equal(fp32_logits(net, x, Precision("cpu", None)), net(x))  # no autocast: model(x) as is


# ------------------------------------------------------------------------------------------------ CRD
@pytest.mark.parametrize("by_class", [False, True])
def test_crd_runs_on_the_meta_device_so_it_draws_there_and_reads_nothing_back(by_class, monkeypatch):
    """On ``meta`` a CPU draw mixed into the step, ``labels.cpu()`` indexing or ``if z < 0`` all raise:
    the step must keep its random draws and its normalisation constant on the memory's device. (Autocast
    has no meta backend: CRD's fp32 region is entered as a no-op here.)"""
    from contextlib import nullcontext

    from zoo_study.transfer.crd import CRDState

    monkeypatch.setattr(torch, "autocast", lambda *a, **k: nullcontext())

    labels = np.arange(40) % 4 if by_class else None
    crd = CRDState(8, 6, 40, feat_dim=5, nce_k=16, labels=labels).to("meta")
    f_s, f_t = torch.randn(4, 8, device="meta"), torch.randn(4, 6, device="meta")
    index = torch.arange(4, device="meta")
    assert crd._negatives(index, 4, None).device.type == "meta"
    loss = crd(f_s, f_t, index)
    assert loss.device.type == "meta" and loss.shape == ()


def test_crd_normalisation_constant_is_estimated_once_on_the_first_batch():
    """Z = mean(first batch's scores) * N, then fixed: the device-side estimate gives the number the
    host-side one did (float32 of the exact product), and a second batch leaves it alone."""
    from zoo_study.transfer.crd import CRDState

    torch.manual_seed(0)
    crd = CRDState(8, 6, 40, feat_dim=5, nce_k=16)
    f_s, f_t, index = torch.randn(4, 8), torch.randn(4, 6), torch.arange(4)
    gen = torch.Generator().manual_seed(1)
    scores = {}
    real = crd._scores

    def spy(v, memory, idx):
        out = real(v, memory, idx)
        scores.setdefault("s" if len(scores) == 0 else "t", out.detach().clone())
        return out

    crd._scores = spy
    crd(f_s, f_t, index, gen)
    expect_s = torch.tensor(float(scores["s"].mean()) * 40, dtype=torch.float32)
    expect_t = torch.tensor(float(scores["t"].mean()) * 40, dtype=torch.float32)
    assert torch.equal(crd.z_s, expect_s) and torch.equal(crd.z_t, expect_t)
    crd(torch.randn(4, 8), torch.randn(4, 6), index + 4, gen)
    assert torch.equal(crd.z_s, expect_s) and torch.equal(crd.z_t, expect_t)


# --------------------------------------------------------------------------- no host reads in a step
_HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_a_training_step_reads_nothing_back_to_the_host_for_every_method(monkeypatch):
    """Every Python-level device-to-host read (``.item()``, ``float()``, ``bool()``, ``.cpu()``, ...) made
    while a member steps is counted, for a pack of every registered method; there must be none (the
    loss's finiteness and sums stay on the device and are read every FINITE_CHECK_EVERY steps)."""
    import zoo_study.transfer.phase as phase_mod
    from zoo_study.methods import method_names
    from zoo_study.transfer.job import run_transfer_pack

    inside, reads = [False], {}
    for name in _HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            if inside[0]:
                reads[_name] = reads.get(_name, 0) + 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = phase_mod._member_step

    def step(m, *a, **k):
        inside[0] = True
        try:
            reads_before = dict(reads)
            real_step(m, *a, **k)
            if reads != reads_before:
                reads.setdefault("by", set()).add(m.config.method)
        finally:
            inside[0] = False

    monkeypatch.setattr(phase_mod, "_member_step", step)
    hp = {"crd": {"nce_k": 64}, "xe_kl_mcl": {"tau": 0.9, "N": 1}, "kl_dp": {"lambda": 0.75}}
    configs = [TransferConfig(method=m, hparams=hp.get(m, {}), epochs=1, batch_size=30, transfer_fraction=0.4,
                              seed=3, base_lr=0.05) for m in method_names()]
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    out = run_transfer_pack(student, srec, (teacher, trec), tiny_source(), configs,
                            job_ids=[f"j{i}" for i in range(len(configs))])
    assert all(not isinstance(r, BaseException) for r in out), out
    assert reads == {}, reads


# ------------------------------------------------------------------------------------------ predictions
class _Tied(nn.Module):
    """Pooled pixels -> 7 classes with exact ties: classes 1, 3 and 5 share weights, and so do 0 and 6."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        w = torch.randn(4, 3)
        self.head = nn.Linear(3, 7)
        with torch.no_grad():
            self.head.weight.copy_(torch.stack([w[0], w[1], w[2], w[1], w[3], w[1], w[0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x.mean((2, 3)))


def test_predict_keeps_the_top_k_on_the_device_and_equals_the_full_softmax_table(monkeypatch):
    from zoo_study.data import ModelPreprocess, make_generated, GeneratedSpec
    from zoo_study.predict import predict, predict_logits, prediction_table

    src = make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=4, n_train=16, n_eval=40,
                                       image_size=8))
    pre = ModelPreprocess.from_data_config({"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                            "crop_pct": 1.0, "interpolation": "bilinear"})
    model = _Tied()
    split = src.eval
    split.labels[:] = split.labels % 7  # 7 classes
    ids, labels, probs = predict_logits(model, split, pre, batch_size=16)
    full = prediction_table("m", ids, labels, probs, topk=5)
    copied: list[tuple[int, ...]] = []
    real_cpu = torch.Tensor.cpu

    def cpu(self, *a, **k):
        copied.append(tuple(self.shape))
        return real_cpu(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    table = predict(model, split, pre, model_id="m", batch_size=16, topk=5)
    assert table.equals(full)
    # ties really occur inside the top 5, and tied classes are listed lowest first
    top = np.array(table.column("topk").to_pylist())
    p_top = np.take_along_axis(probs, top, axis=1)
    tied = p_top[:, 1:] == p_top[:, :-1]
    assert tied.any()
    assert np.all(top[:, 1:][tied] > top[:, :-1][tied])
    assert copied and all(len(s) == 1 or s[-1] <= 5 for s in copied), copied  # never [B, 7]


# ------------------------------------------------------------------------------------------ batch copies
def test_batches_go_to_a_gpu_pinned_and_non_blocking_and_stay_plain_on_cpu(monkeypatch):
    """The copy logic of Runtime.to_device with the tensor methods recorded (no GPU here): on CUDA an
    unpinned batch is pinned once and copied with non_blocking=True (a cached batch's every view too);
    an already pinned one is not pinned again; on CPU nothing is pinned."""
    from zoo_study.data.cache_read import Views

    calls: list[tuple] = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: getattr(self, "_pinned", False))

    def pin(self):
        calls.append(("pin", tuple(self.shape)))
        out = self.clone()
        out._pinned = True
        return out

    def to(self, *a, **k):
        calls.append(("to", str(a[0]), k.get("non_blocking", False), getattr(self, "_pinned", False)))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    gpu = Runtime(torch.device("cuda:0"))
    gpu.to_device(torch.zeros(2, 3))
    assert calls == [("pin", (2, 3)), ("to", "cuda:0", True, True)]
    calls.clear()
    pinned = torch.zeros(4)
    pinned._pinned = True
    gpu.to_device(pinned)
    assert calls == [("to", "cuda:0", True, True)]
    calls.clear()
    gpu.to_device(Views({"a": torch.zeros(1, 3, 2, 2), "b": torch.zeros(1, 3, 4, 4)}))
    assert [c[0] for c in calls] == ["pin", "to", "pin", "to"] and all(c[2] for c in calls if c[0] == "to")
    calls.clear()
    Runtime.create("cpu").to_device(torch.zeros(2))
    assert calls == [("to", "cpu", False, False)]


def test_the_fp16_path_steps_through_a_grad_scaler(monkeypatch):
    """What a GPU without bf16 runs (fp16 autocast, one GradScaler per member), with CPU autocast standing
    in for CUDA: every member's every step goes through its scaler, and the pack finishes."""
    import zoo_study.transfer.job as job_mod
    from zoo_study.transfer.job import run_transfer_pack

    rt = Runtime(torch.device("cpu"), amp=True, amp_dtype=torch.float16, grad_scaler=True)
    monkeypatch.setattr(job_mod.Runtime, "create", classmethod(lambda cls, *a, **k: rt))
    scalers, real_step = [], torch.amp.GradScaler.step

    def step(self, opt, *a, **k):
        scalers.append(id(self))
        return real_step(self, opt, *a, **k)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    configs = [TransferConfig(method=m, hparams={"nce_k": 64} if m == "crd" else {}, base_lr=0.05, epochs=1,
                              batch_size=30, transfer_fraction=0.4, seed=3) for m in ("kl", "crd", "xe_kl_mcl")]
    out = run_transfer_pack(student, srec, (teacher, trec), tiny_source(), configs, job_ids=["a", "b", "c"])
    assert all(not isinstance(r, BaseException) for r in out), out
    steps = out[0].info["phases"][0]["steps"]  # 120 transfer samples / batch 30 = 4 steps
    assert steps == 4 and len(scalers) == 3 * steps and len(set(scalers)) == 3  # one scaler per member
