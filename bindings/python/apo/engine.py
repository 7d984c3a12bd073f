"""apo.Engine: requests in, futures of results out.

A request is the workflow's name and keyword fields (prompt, image, width, steps, seed, ...);
``submit`` returns a ``concurrent.futures.Future`` whose result is an ``apo.Result``, or whose
exception is the ``apo.Error`` subclass of how the request ended (``OutOfMemoryError``,
``CancelledError``, ``TimedOutError``, ``RejectedError``, ``WorkflowFailedError``), with the ``Result`` as the exception's ``.result``.

Threads: the engine runs requests on its own threads and completes futures there. Progress
callbacks and Python workflows are called on those threads holding the GIL: keep callbacks short
and never wait on the engine from one. Everything that waits for the engine releases the GIL.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import concurrent.futures
import json
import os
import pathlib
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch

from . import _core

Lease = _core.Lease

#: Called as on_progress(request_id, step, steps) from an engine thread, with the GIL held.
ProgressCallback = Callable[[int, int, int], None]

_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    # Engine threads need the interpreter to finish their callbacks: stop them before it goes.
    for engine in list(_live_engines):
        engine.close(cancel=True)


def reference_models_dir() -> pathlib.Path:
    """Where the reference models are: $APO_REFERENCE_MODELS, else the copy installed with the
    package (pip), else the source tree's assets/reference."""
    env = os.environ.get("APO_REFERENCE_MODELS")
    if env:
        return pathlib.Path(env)
    installed = pathlib.Path(__file__).parent / "reference"
    if (installed / "vae.safetensors").exists():
        return installed
    return pathlib.Path(_core.default_models_dir())


def reference_requests(seed: int = 1, per_workflow: int = 1, models_dir=None) -> List[Dict[str, Any]]:
    """Requests the reference workflows accept: the demo's trace (``per_workflow`` of each, with
    captions and input pictures drawn from the reference world with ``seed``), as dicts of
    ``Engine.submit`` fields: ``engine.submit(**request)``."""
    directory = pathlib.Path(models_dir) if models_dir is not None else reference_models_dir()
    return [fields for _, fields in _core.demo_requests(str(directory), seed, per_workflow)]


#: The eight reference workflows, by name.
REFERENCE_WORKFLOWS: List[str] = list(_core.reference_workflow_names)


class Workflow(abc.ABC):
    """Base of a workflow written in Python (subclassing it is optional: any object with these
    members works).

    - ``name``: the name requests give.
    - ``models(request)``: the models it needs, as dicts ``{"role", "path", "kind"?,
      "precision"?, "takes_loras"?}``; the engine loads them (through its cache) before ``run``.
    - ``memory_estimate(request)``: device bytes one request adds beyond the models.
    - ``check(request)`` (optional): raise for a request it cannot run; called at submit.
    - ``run(requests, context)``: one ``{name: tensor}`` per request. ``context.step(i, n)``
      reports progress and raises ``apo.CancelledError`` when the batch was cancelled;
      ``context.weights(role)`` / ``context.dense(role, name)`` give the models' weights.

    The engine calls these on its threads, with the GIL held; ``run`` may be called for several
    batches one after another. A raised ``MemoryError`` or ``torch.OutOfMemoryError`` makes the
    engine split the batch and retry, as for its own workflows.
    """

    name: str

    @abc.abstractmethod
    def models(self, request: _core.Request) -> Iterable[Dict[str, Any]]: ...

    @abc.abstractmethod
    def memory_estimate(self, request: _core.Request) -> int: ...

    @abc.abstractmethod
    def run(self, requests: List[_core.Request], context: _core.Context) -> List[Dict[str, torch.Tensor]]: ...


class RequestFuture(concurrent.futures.Future):
    """The future of a request's ``apo.Result``. ``cancel()`` cancels the request in the engine
    too (a queued request at once, a running one at its next step) and succeeds until the result
    is in; ``request_id`` is the engine's id for it."""

    def __init__(self, engine: "Engine") -> None:
        super().__init__()
        # Weak: the engine holds this future (in the request's callback) until the request ends;
        # a strong reference back would let an engine thread drop the last one and destroy the
        # engine from its own thread.
        self._engine = weakref.ref(engine)
        self.request_id: Optional[int] = None

    def cancel(self) -> bool:
        cancelled = super().cancel()
        engine = self._engine()
        if cancelled and self.request_id is not None and engine is not None and not engine.closed:
            engine.cancel(self.request_id)
        return cancelled

    def _deliver(self, result: _core.Result) -> None:
        # On an engine thread, GIL held.
        if not self.set_running_or_notify_cancel():
            return  # the caller cancelled it
        error = result.error()
        if error is None:
            self.set_result(result)
        else:
            error.result = result
            self.set_exception(error)


class ModelCache:
    """The engine's model cache: leases keep models resident (``with engine.models.acquire(path)
    as lease:``), stats and residents say what it holds."""

    def __init__(self, engine: "_core.Engine") -> None:
        self._engine = engine

    def acquire(
        self,
        path: Union[str, os.PathLike],
        *,
        kind: str = "other",
        precision: Optional[str] = None,
        device: str = "cpu",
        loras: Optional[Sequence[Union[str, tuple]]] = None,
    ) -> Lease:
        """The model at ``path`` (relative paths: under storage_optimization.model_cache_path),
        loaded and stored as the engine's quantization policy plans (or in ``precision``),
        resident on ``device`` while the lease is held. Blocks until it is ready."""
        return self._engine.acquire_model(str(path), kind, precision, device, loras)

    def stats(self) -> Dict[str, Any]:
        """Counters over the cache's life: hits, misses, loads, evictions, bytes read, ..."""
        return self._engine.cache_stats()

    def residents(self) -> List[Dict[str, Any]]:
        """Each resident instance: path, kind, format, device, bytes, leases, ..."""
        return self._engine.cache_residents()

    def release_unused(self) -> int:
        """Drops every unleased model; returns the bytes they held."""
        return self._engine.cache_release_unused()


def _config_from(config: Union[None, _core.Config, str, os.PathLike, Dict[str, Any]]) -> _core.Config:
    if config is None:
        return _core.Config()
    if isinstance(config, _core.Config):
        return config
    if isinstance(config, dict):
        return _core.Config.from_json(json.dumps(config), "<dict>")
    if isinstance(config, (str, os.PathLike)):
        return _core.Config.load(str(config))
    raise _core.InvalidArgumentError(
        f"config: expected None, an apo.Config, a dict or a path, got {type(config).__name__}"
    )


class Engine:
    """An apo engine: a scheduler, a batcher, the model cache and workers over this machine's
    devices, configured by ``config`` (an ``apo.Config``, a dict of the guide's blocks, a JSON
    file's path, or None for the defaults).

    ``workflows``: "reference" (the eight reference workflows on the committed models), a list of
    reference workflow names and/or Python workflow objects (see ``apo.Workflow``), or None.

    Use it as a context manager, or call ``close()``: leaving a ``with`` block normally runs every
    request to its end; leaving it with an exception cancels them.
    """

    def __init__(
        self,
        config: Union[None, _core.Config, str, os.PathLike, Dict[str, Any]] = None,
        workflows: Union[None, str, Sequence[Any]] = "reference",
        *,
        models_dir: Union[None, str, os.PathLike] = None,
        judge: bool = True,
        monitor: bool = False,
    ) -> None:
        self._core = _core.Engine(_config_from(config), monitor)
        self._workflows: List[str] = []
        self._models_dir = pathlib.Path(models_dir) if models_dir is not None else reference_models_dir()
        self._judge = judge
        self.models = ModelCache(self._core)
        _live_engines.add(self)
        if workflows is None:
            return
        if isinstance(workflows, str):
            if workflows != "reference":
                raise _core.InvalidArgumentError(
                    f"workflows: expected \"reference\", a list or None, got {workflows!r}"
                )
            self.add_reference_workflows()
            return
        names = [w for w in workflows if isinstance(w, str)]
        if names:
            self.add_reference_workflows(names)
        for workflow in workflows:
            if not isinstance(workflow, str):
                self.add_workflow(workflow)

    # Workflows -------------------------------------------------------------------------------

    def add_reference_workflows(self, names: Optional[Sequence[str]] = None) -> None:
        """Registers the reference workflows (all eight, or those named)."""
        wanted = list(names) if names else []
        self._core.add_reference_workflows(str(self._models_dir), wanted, self._judge)
        self._workflows.extend(wanted or REFERENCE_WORKFLOWS)

    def add_workflow(self, workflow: Any) -> None:
        """Registers a workflow written in Python (see ``apo.Workflow``)."""
        self._core.add_workflow(workflow)
        self._workflows.append(str(workflow.name))

    @property
    def workflows(self) -> List[str]:
        """Names of the registered workflows."""
        return list(self._workflows)

    # Requests --------------------------------------------------------------------------------

    def submit(
        self,
        workflow: str,
        prompt: str = "",
        *,
        on_progress: Optional[ProgressCallback] = None,
        **fields: Any,
    ) -> RequestFuture:
        """Submits a request and returns the future of its ``apo.Result``.

        Fields: negative_prompt, image / mask / first_frame (tensors, [C, H, W] in [0, 1]),
        strength, loras ([path or (path, strength)]), model, width, height, frames, steps,
        guidance, sampler, quality ("speed_first", "balanced", "quality_first"), priority, seed,
        timeout_s (the request times out if still queued then). Unset sampling comes from the
        quality level. A request the workflow cannot run raises here (InvalidArgumentError,
        NotFoundError for an unknown workflow).

        ``on_progress(request_id, step, steps)`` is called on an engine thread with the GIL held.
        """
        future = RequestFuture(self)
        future.request_id = self._core.submit(
            workflow, on_progress, future._deliver, prompt=prompt, **fields
        )
        return future

    async def submit_async(self, workflow: str, prompt: str = "", **fields: Any) -> _core.Result:
        """``await``-able form of submit: the Result, or the request's apo.Error. Cancelling the
        awaiting task cancels the request."""
        return await asyncio.wrap_future(self.submit(workflow, prompt, **fields))

    def run(self, workflow: str, prompt: str = "", *, timeout: Optional[float] = None, **fields: Any) -> _core.Result:
        """Submits and waits: the Result, or the request's apo.Error."""
        return self.submit(workflow, prompt, **fields).result(timeout)

    def cancel(self, request_id: int) -> bool:
        """Cancels a request by id; False when it has already ended."""
        return self._core.cancel(request_id)

    # Life ------------------------------------------------------------------------------------

    def close(self, cancel: bool = False) -> None:
        """Stops taking requests and ends those it holds: runs them to their end (drain), or
        cancels them (``cancel=True``); joins the engine's threads. Idempotent."""
        if not self._core.closed:
            self._core.close(cancel)
        _live_engines.discard(self)

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)

    # Inspection ------------------------------------------------------------------------------

    def stats(self) -> Dict[str, int]:
        """Counters over the engine's life: submitted, completed, cancelled, timed_out, rejected,
        out_of_memory, failed, batches, oom_splits, and queued / running now."""
        return self._core.stats()

    def memory(self, device: int = 0) -> Dict[str, Any]:
        """A device's memory ledger: budget, weights, pool, batches, used and peak bytes."""
        return self._core.memory(device)

    def monitor_report(self) -> Optional[Dict[str, Any]]:
        """The performance monitor's report (``monitor=True``): summaries per workflow, trends,
        alerts and recommendations; None without a monitor."""
        return self._core.monitor_report()

    @property
    def devices(self) -> List[str]:
        return self._core.devices

    @property
    def config(self) -> _core.Config:
        return self._core.config

    @property
    def policies(self) -> str:
        """The engine's policies: "ConfiguredPrecision, CachingPool, MemoryAwareBatcher, ..."."""
        return self._core.policies
