"""GPU support without a GPU: device resolution, the bf16 autocast gate, on_eval, and the
per-GPU Prefect concurrency limit (CUDA availability faked; no CUDA kernel ever runs).

The bf16 forward path itself is exercised with CPU bf16 autocast standing in for CUDA's;
tests/benchmarks/gpu_check.py checks the real thing on a GPU.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from prompt_core.backbones import (
    Backbone,
    EncoderBackbone,
    MLMBackbone,
    autocast,
    bf16_active,
    cached_backbone,
    load_backbone,
    resolve_device,
)
from prompt_core.config import TrainConfig
from prompt_core.errors import InputError
from prompt_core.evaluation import EncodedSplit
from prompt_core.training import train_prompt
from tests.core_helpers import keyword_task

CFG = TrainConfig(n_tokens=4, steps=6, batch_size=8, eval_every=2, lr=3e-2, max_length=32)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA 'available' with 2 bf16-capable cards; records is_bf16_supported's kwargs."""
    calls: list[dict] = []

    def bf16_supported(**kw):
        calls.append(kw)
        return True

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    return calls


@pytest.fixture(scope="module")
def task():
    return keyword_task(n_train=32, n_dev=16)


# --- resolve_device ------------------------------------------------------------------------


def test_resolve_device_without_cuda(no_cuda):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    assert resolve_device("auto") == "cpu"
    for spec in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(InputError, match=rf"device '{spec}': CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(InputError, match="CPU-only build|finds no GPU"):
        resolve_device("cuda")


def test_resolve_device_with_cuda(fake_cuda):
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("CUDA:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"  # the CPU stays available
    with pytest.raises(InputError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\) "
                                         r"\(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "", "mps", "meta"])
def test_resolve_device_rejects_unknown_specs(spec):
    with pytest.raises(InputError, match="use cpu, cuda, cuda:N or auto"):
        resolve_device(spec)


def test_load_backbone_without_gpu_fails_before_loading(no_cuda, tmp_path):
    # an empty folder: had it tried to load weights it would fail with another error
    with pytest.raises(InputError, match="device 'cuda:0': CUDA is not available"):
        load_backbone("encoder", str(tmp_path), device="cuda:0")


def test_auto_device_shares_the_cached_cpu_backbone(no_cuda, tiny_models):
    auto = cached_backbone("encoder", tiny_models["encoder"], device="auto")
    assert auto is cached_backbone("encoder", tiny_models["encoder"], device="cpu")
    assert auto.device == torch.device("cpu")
    assert next(auto.model.parameters()).device.type == "cpu"


# --- autocast ------------------------------------------------------------------------------


def test_autocast_is_a_noop_on_cpu(no_cuda):
    for device, enabled in (("cpu", True), ("cpu", False), ("cuda", True), ("cuda:0", True)):
        assert isinstance(autocast(device, enabled), nullcontext)
        assert not bf16_active(device, enabled)


def test_autocast_on_a_bf16_gpu(fake_cuda, monkeypatch):
    ctx = autocast("cuda:0", True)
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert fake_cuda[0] == {"including_emulation": False}  # emulated bf16 is not used
    assert isinstance(autocast(torch.device("cuda"), True), torch.autocast)
    assert isinstance(autocast("cuda:0", False), nullcontext)  # bf16: false
    assert isinstance(autocast("cpu", True), nullcontext)  # CPU model on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: False)  # e.g. a V100
    assert isinstance(autocast("cuda:0", True), nullcontext)


def test_backbone_autocast_needs_a_kind_that_supports_bf16(fake_cuda, encoder):
    assert EncoderBackbone.supports_bf16 and MLMBackbone.supports_bf16
    assert not Backbone.supports_bf16  # a new kind opts in
    on_gpu = SimpleNamespace(device=torch.device("cuda:0"), supports_bf16=True)
    assert isinstance(Backbone.autocast(on_gpu, True), torch.autocast)
    assert isinstance(Backbone.autocast(on_gpu, False), nullcontext)
    other_kind = SimpleNamespace(device=torch.device("cuda:0"), supports_bf16=False)
    assert isinstance(Backbone.autocast(other_kind, True), nullcontext)
    assert isinstance(encoder.autocast(True), nullcontext)  # the tiny encoder is on the CPU


# --- the bf16 forward path (CPU bf16 autocast standing in for CUDA's) ----------------------


def _cpu_bf16(monkeypatch, backbone) -> list[bool]:
    """Make ``backbone.autocast`` use CPU bf16 autocast; returns the flags it was called with."""
    flags: list[bool] = []

    def fake(bf16: bool):
        flags.append(bf16)
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    monkeypatch.setattr(backbone, "autocast", fake)
    return flags


def _matmul_dtypes(backbone) -> tuple[list[torch.dtype], object]:
    """Record the output dtype of a Linear in the first layer at every forward pass (a layer's
    own output is float32 even under autocast: LayerNorm runs in float32)."""
    seen: list[torch.dtype] = []
    dense = backbone.model.base_model.encoder.layer[0].intermediate.dense
    hook = dense.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen, hook


@pytest.mark.parametrize("bf16", [False, True])
def test_training_under_autocast(bf16, monkeypatch, tiny_models, task):
    bb = load_backbone("encoder", tiny_models["encoder"])
    flags = _cpu_bf16(monkeypatch, bb)
    seen, hook = _matmul_dtypes(bb)
    try:
        r = train_prompt(bb, task, CFG, seed=0, bf16=bf16)
    finally:
        hook.remove()
    # the label scorers of the train and dev splits (float32, built once), then every forward
    # pass (step-0 dev evaluation, 6 steps + 3 dev evaluations of 1 batch) in the asked precision
    assert flags == [bf16] * 10
    assert seen == [torch.float32] * 2 + [torch.bfloat16 if bf16 else torch.float32] * 10
    assert r.prompt.dtype == torch.float32 and r.prompt.shape == (4, 32)
    assert all(math.isfinite(c.train_loss) for c in r.curve[1:])
    assert r.best_step >= 1


def test_logits_are_float32_under_autocast(monkeypatch, tiny_models, encoder, task):
    mlm = load_backbone("mlm", tiny_models["mlm"])
    for bb in (encoder, mlm):
        split = EncodedSplit(bb, task, "validation", 32)
        batch, _ = split.batch(list(range(8)))
        prompt = torch.randn(4, bb.hidden_size)
        ref = bb.logits(prompt, batch, split.scorer)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = bb.logits(prompt, batch, split.scorer)
        assert ref.dtype == low.dtype == torch.float32 and low.shape == (8, 2)
        assert torch.isfinite(low).all()
        assert not torch.equal(ref, low)  # the body really ran in bf16


def test_evaluation_bf16_flag(monkeypatch, tiny_models, task):
    bb = load_backbone("encoder", tiny_models["encoder"])
    flags = _cpu_bf16(monkeypatch, bb)
    prompt = torch.randn(4, bb.hidden_size, dtype=torch.float64)  # cast to float32 on use
    split = EncodedSplit(bb, task, "validation", 32, bf16=True)
    seen, hook = _matmul_dtypes(bb)
    try:
        s = split.evaluate(prompt, batch_size=8)  # 16 examples: 2 batches
        assert flags == [True, True] and set(seen) == {torch.bfloat16}
        split.evaluate(prompt, batch_size=8, bf16=False)  # per call override
        assert flags[2:] == [False, False] and seen[2:] == [torch.float32] * 2
    finally:
        hook.remove()
    assert set(s) == {"accuracy", "macro_f1"} and 0 <= s["accuracy"] <= 1


# --- on_eval -------------------------------------------------------------------------------


def test_on_eval_reports_every_dev_evaluation(encoder, task):
    calls: list[tuple[int, dict[str, float]]] = []
    r = train_prompt(encoder, task, CFG.model_copy(update={"steps": 5}), seed=0,
                     on_eval=lambda step, s: calls.append((step, s)))
    assert [step for step, _ in calls] == [0, 2, 4, 5]  # init, every eval_every, the last step
    assert [c.step for c in r.curve] == [0, 2, 4, 5]
    for (_, s), c in zip(calls, r.curve, strict=True):
        assert set(s) == {"accuracy", "macro_f1"}
        assert (s["accuracy"], s["macro_f1"]) == (c.dev_accuracy, c.dev_macro_f1)
    assert r.best_scores in [s for step, s in calls if step >= 1]
    # bf16 on the CPU is a no-op: the same training bit for bit
    same = train_prompt(encoder, task, CFG.model_copy(update={"steps": 5}), seed=0, bf16=True)
    assert torch.equal(same.prompt, r.prompt) and same.best_scores == r.best_scores


# --- gpu_slot: one Prefect global concurrency limit per card --------------------------------


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def _all_limits() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {lim.name for lim in client.read_global_concurrency_limits(limit=200)}


def _two_trainings(device: str, per_gpu: int, hold_s: float, barrier: threading.Barrier | None):
    """Two threads each hold gpu_slot(device) for ``hold_s``; returns (enter, exit) times."""
    from tasks.gpu import gpu_slot

    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def train():
        try:
            with gpu_slot(device, per_gpu=per_gpu, timeout_s=60):
                start = time.monotonic()
                if barrier is not None:
                    barrier.wait(timeout=30)  # both inside at once, or BrokenBarrierError
                time.sleep(hold_s)
                spans.append((start, time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    assert len(spans) == 2
    return sorted(spans)


def test_gpu_slot_one_training_per_card(prefect_harness, fake_cuda):
    from tasks.gpu import gpu_limit_name

    spans = _two_trainings("cuda:0", per_gpu=1, hold_s=0.5, barrier=None)
    (_, first_exit), (second_enter, _) = spans
    assert first_exit <= second_enter, spans  # never on the card together
    lim = _limit(gpu_limit_name("cuda:0"))
    assert lim.limit == 1 and lim.active_slots == 0  # created with 1 slot, and released


def test_gpu_slot_shared_card(prefect_harness, fake_cuda):
    from tasks.gpu import gpu_limit_name

    spans = _two_trainings("cuda:1", per_gpu=2, hold_s=0.1, barrier=threading.Barrier(2))
    (_, first_exit), (second_enter, _) = spans
    assert second_enter < first_exit  # overlapped (the barrier proves both held a slot)
    lim = _limit(gpu_limit_name("cuda:1"))
    assert lim.limit == 2 and lim.active_slots == 0


def test_gpu_slot_releases_on_error_and_times_out(prefect_harness, fake_cuda):
    from tasks.gpu import gpu_limit_name, gpu_slot

    name = gpu_limit_name("cuda")  # cuda -> the current device (faked: 1)
    assert name.endswith("-1")
    with pytest.raises(RuntimeError, match="boom"):
        with gpu_slot("cuda", per_gpu=3) as held:
            assert held == name and _limit(name).active_slots == 1
            raise RuntimeError("boom")
    lim = _limit(name)
    assert lim.active_slots == 0 and lim.limit == 3  # released; slot count set to per_gpu

    inside = threading.Event()
    leave = threading.Event()

    def holder():
        with gpu_slot("cuda:1", per_gpu=1):
            inside.set()
            leave.wait(timeout=30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert inside.wait(timeout=30)
        with pytest.raises(TimeoutError):
            with gpu_slot("cuda:1", per_gpu=1, timeout_s=0.5):
                pytest.fail("entered a full card")
    finally:
        leave.set()
        t.join(timeout=30)
    with gpu_slot("cuda:1", per_gpu=1, timeout_s=30):  # free again
        pass
    assert _limit(name).limit == 1


def test_gpu_slot_on_cpu_creates_no_limit(prefect_harness, no_cuda, monkeypatch):
    import tasks.gpu as gpu

    before = _all_limits()

    def no_api(*a, **k):
        raise AssertionError("gpu_slot called the Prefect API for a CPU device")

    monkeypatch.setattr(gpu, "get_client", no_api)
    monkeypatch.setattr(gpu, "concurrency", no_api)
    for device in ("cpu", "auto"):
        with gpu.gpu_slot(device, per_gpu=3) as held:
            assert held is None
    monkeypatch.undo()
    assert _all_limits() == before
    with pytest.raises(ValueError, match="per_gpu must be >= 1"):
        with gpu.gpu_slot("cpu", per_gpu=0):
            pass


def test_gpu_limit_name():
    from tasks.gpu import gpu_limit_name

    assert gpu_limit_name("cuda:3", host="node-7.example") == "gpu-node-7.example-3"
    assert gpu_limit_name("cuda:0", host="a/b c<d") == "gpu-a_b_c_d-0"
    with pytest.raises(ValueError, match="not a CUDA device"):
        gpu_limit_name("cpu")
