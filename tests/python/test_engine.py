"""apo.Engine from Python: futures, asyncio, cancellation, progress, failing results as typed
errors, Python workflows, the model cache and the monitor, on the reference workflows at 64x64
with a few steps."""

import asyncio
import concurrent.futures
import threading

import pytest
import torch

import apo
from apo.engine import reference_requests, reference_models_dir

OVERRIDES = [
    "performance_optimization.model_precision=fp32",
    "system_optimization.max_cpu_threads=1",
    "scheduling.max_queue_delay_ms=0",
    "memory_optimization.cleanup_interval_s=3600",
]


def config(*extra):
    return apo.Config.from_json("{}", overrides=OVERRIDES + list(extra))


def request(workflow, seed=1):
    return next(r for r in reference_requests(seed) if r["workflow"] == workflow)


@pytest.fixture(scope="module")
def engine():
    with apo.Engine(config(), ["newbie_anime", "qwen_edit"]) as e:
        yield e


class Gate(apo.Workflow):
    """A Python workflow that holds its batch until released, then steps and fills images."""

    name = "gate"

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches = []

    def models(self, request):
        return []

    def memory_estimate(self, request):
        return 1 << 10

    def run(self, requests, context):
        self.batches.append([r.seed for r in requests])
        self.entered.set()
        assert self.release.wait(20)
        for step in (1, 2):
            context.step(step, 2)
        return [{"image": torch.full((3, 8, 8), float(r.seed))} for r in requests]


def test_submit_gives_a_future_of_the_result(engine):
    steps = []
    future = engine.submit(**request("newbie_anime"), steps=3, on_progress=lambda i, s, n: steps.append((i, s, n)))
    assert isinstance(future, concurrent.futures.Future)
    result = future.result(60)
    assert result.ok and result.status == "ok" and result.error() is None
    assert result.id == future.request_id
    image = result.outputs["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert steps == [(result.id, 1, 3), (result.id, 2, 3), (result.id, 3, 3)]
    assert result.timings["denoise_s"] > 0 and result.timings["total_s"] >= result.timings["denoise_s"]
    assert result.peak_memory_bytes > 0
    assert 0.0 <= result.quality <= 1.0
    assert result.decisions["device"] == "cpu" and result.decisions["batch_size"] == 1
    assert any(fmt == "none" for _, fmt in result.decisions["precisions"])


def test_the_same_seed_gives_the_same_picture(engine):
    a = engine.run(**request("qwen_edit"), steps=2)
    b = engine.run(**request("qwen_edit"), steps=2)
    assert torch.equal(a.outputs["image"], b.outputs["image"])


def test_asyncio_awaits_results(engine):
    async def both():
        return await asyncio.gather(
            engine.submit_async(**request("newbie_anime", 1), steps=2),
            engine.submit_async(**request("newbie_anime", 2), steps=2),
        )

    first, second = asyncio.run(both())
    assert first.ok and second.ok and first.id != second.id


def test_bad_requests_raise_at_submit(engine):
    with pytest.raises(apo.NotFoundError, match="no workflow named"):
        engine.submit("no_such_workflow")
    with pytest.raises(apo.InvalidArgumentError, match="64x64"):
        engine.submit(**dict(request("newbie_anime"), width=128))
    with pytest.raises(apo.InvalidArgumentError, match="unknown request field 'colour'"):
        engine.submit("newbie_anime", colour="red")
    with pytest.raises(apo.InvalidArgumentError, match="expected a tensor"):
        engine.submit(**dict(request("qwen_edit"), image=[1, 2, 3]))


def test_cancelling_queued_and_running_requests():
    gate = Gate()
    with apo.Engine(config(), [gate]) as engine:
        running = engine.submit("gate", seed=1, width=64, height=64)
        assert gate.entered.wait(20)
        queued = engine.submit("gate", seed=2, width=64, height=64)
        assert queued.cancel()  # cancels it in the engine too
        assert queued.cancelled()
        assert engine.cancel(running.request_id)
        gate.release.set()
        with pytest.raises(apo.CancelledError) as caught:
            running.result(20)
        assert caught.value.result.status == "cancelled"
        assert gate.batches == [[1]]  # the cancelled queued request never ran
        stats = engine.stats()
        assert stats["cancelled"] == 2 and stats["completed"] == 0


def test_a_python_workflow_runs_through_the_engine():
    gate = Gate()
    gate.release.set()
    progress = []
    with apo.Engine(config(), [gate]) as engine:
        assert engine.workflows == ["gate"]
        result = engine.run("gate", seed=7, width=64, height=64, on_progress=lambda i, s, n: progress.append(s))
    assert torch.equal(result.outputs["image"], torch.full((3, 8, 8), 7.0))
    assert progress == [1, 2]
    assert engine.closed


class Failing(Gate):
    name = "failing"

    def __init__(self, exception):
        super().__init__()
        self.exception = exception

    def run(self, requests, context):
        raise self.exception


def test_failing_results_become_apo_errors():
    with apo.Engine(config(), [Failing(ValueError("bad pixels"))]) as engine:
        with pytest.raises(apo.WorkflowFailedError, match="ValueError: bad pixels") as caught:
            engine.run("failing", width=64, height=64)
    assert caught.value.result.status == "failed"
    # Running out of memory in a workflow is the engine's out_of_memory, whose error is also
    # torch's OutOfMemoryError (what hosts such as ComfyUI catch).
    with apo.Engine(config(), [Failing(torch.OutOfMemoryError("no room"))]) as engine:
        with pytest.raises(torch.OutOfMemoryError) as caught:
            engine.run("failing", width=64, height=64)
    assert isinstance(caught.value, apo.OutOfMemoryError)
    assert caught.value.result.status == "out_of_memory"


def test_deadlines_and_full_queues():
    gate = Gate()
    with apo.Engine(config("scheduling.max_queue_size=1"), [gate]) as engine:
        first = engine.submit("gate", seed=1, width=64, height=64)
        assert gate.entered.wait(20)
        late = engine.submit("gate", seed=2, width=64, height=64, timeout_s=0.05)
        with pytest.raises(apo.TimedOutError) as caught:
            late.result(20)
        assert isinstance(caught.value, TimeoutError)
        queued = engine.submit("gate", seed=3, width=64, height=64)
        rejected = engine.submit("gate", seed=4, width=64, height=64)
        with pytest.raises(apo.RejectedError):
            rejected.result(20)
        gate.release.set()
        assert first.result(20).ok and queued.result(20).ok


def test_close_cancels_or_drains():
    gate = Gate()
    engine = apo.Engine(config(), [gate])
    running = engine.submit("gate", width=64, height=64)
    assert gate.entered.wait(20)
    gate.release.set()
    engine.close()  # drains
    assert running.result(0).ok
    engine.close()  # idempotent
    with pytest.raises(apo.InvalidArgumentError, match="closed"):
        engine.submit("gate")


def test_the_model_cache_leases_models(engine):
    path = str(reference_models_dir() / "vae.safetensors")
    with engine.models.acquire(path, kind="vae", precision="fp32") as lease:
        assert lease.held and lease.kind == "vae" and lease.device == "cpu"
        assert lease.nbytes > 0 and lease.format == "none"
        weights = lease.weights
        assert weights and all(isinstance(w, apo.QTensor) for w in weights.values())
        resident = [r for r in engine.models.residents() if r["path"] == lease.path]
        assert resident and resident[0]["leases"] == 1
    assert not lease.held
    stats = engine.models.stats()
    assert stats["hits"] + stats["misses"] >= 1
    with pytest.raises(apo.NotFoundError):
        engine.models.acquire("/no/such/model.safetensors")


def test_stats_memory_and_monitor_report():
    with apo.Engine(config(), ["newbie_anime"], monitor=True) as engine:
        engine.run(**request("newbie_anime"), steps=2)
        assert engine.stats()["completed"] == 1
        ledger = engine.memory(0)
        assert ledger["device"] == "cpu" and ledger["budget_bytes"] > 0
        report = engine.monitor_report()
        assert report["window"]["requests"] == 1
        assert report["workflows"][0]["workflow"] == "newbie_anime"
        assert report["summary"]["generation_seconds"]["count"] == 1
    with apo.Engine(config(), None) as engine:
        assert engine.monitor_report() is None


def test_cancelling_an_awaiting_task_cancels_the_request():
    gate = Gate()

    async def cancel_while_running(engine):
        task = asyncio.ensure_future(engine.submit_async("gate", width=64, height=64))
        while not gate.entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with apo.Engine(config(), [gate]) as engine:
        asyncio.run(cancel_while_running(engine))
        gate.release.set()
        for _ in range(200):
            if engine.stats()["cancelled"] == 1:
                break
            threading.Event().wait(0.01)
        assert engine.stats()["cancelled"] == 1 and engine.stats()["completed"] == 0


class FirstWeights(Gate):
    """A Python workflow that reads the model the engine loaded for it."""

    name = "first_weights"

    def models(self, request):
        path = str(reference_models_dir() / "vae.safetensors")
        return [{"role": "vae", "path": path, "kind": "vae", "precision": "fp32"}]

    def run(self, requests, context):
        weights = context.weights("vae")
        first = sorted(weights)[0]
        assert weights[first].format == "none"
        context.set_quality(0, 0.5)
        return [{"first": context.dense("vae", first).flatten()[:4].clone(), "count": torch.tensor(len(weights))}]


def test_a_python_workflow_reads_its_models():
    stored = apo.models.load_file(reference_models_dir() / "vae.safetensors")
    with apo.Engine(config(), [FirstWeights()]) as engine:
        result = engine.run("first_weights", width=64, height=64)
    first = sorted(stored)[0]
    assert torch.equal(result.outputs["first"], stored[first].float().flatten()[:4])
    assert int(result.outputs["count"]) == len(stored)
    assert result.quality == 0.5
