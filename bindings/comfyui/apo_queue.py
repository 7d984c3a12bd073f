"""The APO queue: prompts with a priority and a deadline, grouped by the models they use, fed to
ComfyUI's own prompt queue one at a time in the order that drops model reloads.

ComfyUI keeps the outputs of the last prompt's loader nodes: a prompt that uses the same
checkpoint as the one before it does not load it again, one that uses another does. Prompts that
arrive interleaved (A, B, A, B) therefore load a model each; the APO queue holds them and releases
the next one only when ComfyUI's queue is empty, choosing it by this rule:

1. a prompt whose deadline is nearer than two run times (the mean of recent prompts) goes first,
   earliest deadline first;
2. otherwise the highest effective priority: the priority given, raised with waiting up to the
   highest level after ``scheduling.aging_bound_s`` (apo's config, 300 s), so nothing starves;
3. among those, a prompt using the models of the prompt that ran last, else the oldest prompt's.

Routes (under /apo/): POST /apo/queue/prompt, GET /apo/queue, GET /apo/report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import time
import uuid
from typing import Callable, List, Optional, Tuple

from .monitor import MONITOR

#: Input values that name a model file end with one of these.
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".zst", ".xz")


def prompt_models(prompt: dict) -> Tuple[Tuple[str, str, str], ...]:
    """The model files a prompt (ComfyUI's API format) loads: (class_type, input, file) of every
    string input that names a model file, sorted; prompts with equal tuples share models."""
    found = []
    for node in prompt.values():
        if not isinstance(node, dict):
            continue
        for key, value in (node.get("inputs") or {}).items():
            if isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES):
                found.append((str(node.get("class_type", "")), key, value))
    return tuple(sorted(found))


@dataclasses.dataclass
class QueuedPrompt:
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list
    priority: int
    deadline: Optional[float]  # on the queue's clock; None: none
    submitted: float
    models: tuple
    sequence: int


class PromptScheduler:
    """The ordering rule above, with an injectable clock; not thread-safe (the server's event
    loop is its only user)."""

    def __init__(self, priority_levels: int = 10, aging_bound_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        if priority_levels < 1:
            raise ValueError(f"priority_levels {priority_levels} must be at least 1")
        if aging_bound_s <= 0:
            raise ValueError(f"aging_bound_s {aging_bound_s} must be positive")
        self.priority_levels = priority_levels
        self.aging_bound_s = aging_bound_s
        self.clock = clock
        self.pending: List[QueuedPrompt] = []
        self.run_seconds: List[float] = []
        self.last_models: Optional[tuple] = None
        self._sequence = 0

    def submit(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list,
               priority: int = 0, deadline_s: Optional[float] = None) -> QueuedPrompt:
        if not 0 <= priority < self.priority_levels:
            raise ValueError(f"priority {priority} is outside 0..{self.priority_levels - 1}")
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s {deadline_s} must be positive (seconds from now)")
        now = self.clock()
        item = QueuedPrompt(prompt_id, prompt, extra_data, outputs, priority,
                            None if deadline_s is None else now + deadline_s, now,
                            prompt_models(prompt), self._sequence)
        self._sequence += 1
        self.pending.append(item)
        return item

    def expected_run_s(self) -> float:
        recent = self.run_seconds[-20:]
        return statistics.fmean(recent) if recent else 0.0

    def effective_priority(self, item: QueuedPrompt, now: float) -> float:
        waited = max(0.0, now - item.submitted)
        return item.priority + (self.priority_levels - 1 - item.priority) * min(1.0, waited / self.aging_bound_s)

    def next(self) -> Optional[QueuedPrompt]:
        """Removes and returns the prompt to run next, or None."""
        if not self.pending:
            return None
        now = self.clock()
        horizon = 2 * self.expected_run_s()
        urgent = [p for p in self.pending if p.deadline is not None and p.deadline - now <= horizon]
        if urgent:
            chosen = min(urgent, key=lambda p: (p.deadline, p.sequence))
        else:
            levels = {id(p): int(self.effective_priority(p, now)) for p in self.pending}
            top = max(levels.values())
            candidates = [p for p in self.pending if levels[id(p)] == top]
            same = [p for p in candidates if p.models == self.last_models]
            if same:
                chosen = min(same, key=lambda p: p.sequence)
            else:
                chosen = min(candidates, key=lambda p: p.sequence)
        self.pending.remove(chosen)
        self.last_models = chosen.models
        return chosen

    def record_run(self, seconds: float) -> None:
        self.run_seconds.append(seconds)
        del self.run_seconds[:-100]


class QueueFeeder:
    """Feeds ComfyUI's PromptQueue from a PromptScheduler: one prompt at a time, when ComfyUI's
    queue has nothing queued or running."""

    poll_s = 0.02

    def __init__(self, server, scheduler: PromptScheduler):
        self.server = server
        self.scheduler = scheduler
        self.task: Optional[asyncio.Task] = None
        self.running: Optional[Tuple[QueuedPrompt, float]] = None
        self.released = 0
        self.last_models: Optional[tuple] = None

    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def _release(self, item: QueuedPrompt) -> None:
        now = self.scheduler.clock()
        previous = self.last_models
        self.last_models = item.models
        number = self.server.number
        self.server.number += 1
        self.server.prompt_queue.put((number, item.prompt_id, item.prompt, item.extra_data, item.outputs))
        self.running = (item, now)
        self.released += 1
        MONITOR.record("prompt", prompt_id=item.prompt_id, priority=item.priority, wait_s=now - item.submitted,
                       switched_models=previous is not None and previous != item.models,
                       missed_deadline=item.deadline is not None and now > item.deadline)

    async def _run(self) -> None:
        while True:
            try:
                if self.server.prompt_queue.get_tasks_remaining() == 0:
                    if self.running is not None:
                        self.scheduler.record_run(self.scheduler.clock() - self.running[1])
                        self.running = None
                    item = self.scheduler.next()
                    if item is not None:
                        self._release(item)
            except Exception:  # keep feeding: one bad prompt must not stop the queue
                logging.exception("APO queue: releasing a prompt failed")
            await asyncio.sleep(self.poll_s)


def register_routes(server) -> QueueFeeder:
    """Adds the /apo/ routes to ComfyUI's PromptServer and returns the feeder."""
    from aiohttp import web

    import apo
    import execution

    scheduling = apo.Config().to_dict()["scheduling"]
    feeder = QueueFeeder(server, PromptScheduler(int(scheduling["priority_levels"]),
                                                 float(scheduling["aging_bound_s"])))
    routes = server.routes

    @routes.post("/apo/queue/prompt")
    async def apo_queue_prompt(request):
        try:
            body = await request.json()
        except ValueError as error:
            return web.json_response({"error": f"the body is not JSON: {error}"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return web.json_response({"error": "expected {\"prompt\": {...}, \"priority\", \"deadline_s\"}"}, status=400)
        body = server.trigger_on_prompt(body)
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        valid = await execution.validate_prompt(prompt_id, body["prompt"], None)
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        try:
            item = feeder.scheduler.submit(prompt_id, body["prompt"], extra_data, valid[2],
                                           int(body.get("priority", 0)),
                                           None if body.get("deadline_s") is None else float(body["deadline_s"]))
        except (TypeError, ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        feeder.ensure_started()
        return web.json_response({"prompt_id": item.prompt_id, "pending": len(feeder.scheduler.pending),
                                  "node_errors": valid[3]})

    @routes.get("/apo/queue")
    async def apo_queue_status(request):
        now = feeder.scheduler.clock()
        pending = [{"prompt_id": p.prompt_id, "priority": p.priority,
                    "effective_priority": round(feeder.scheduler.effective_priority(p, now), 3),
                    "deadline_in_s": None if p.deadline is None else round(p.deadline - now, 3),
                    "waiting_s": round(now - p.submitted, 3), "models": [m[2] for m in p.models]}
                   for p in feeder.scheduler.pending]
        return web.json_response({"pending": pending, "released": feeder.released,
                                  "expected_run_s": feeder.scheduler.expected_run_s()})

    @routes.get("/apo/report")
    async def apo_report(request):
        summary = MONITOR.summary()
        return web.json_response({"summary": summary, "recommendations": MONITOR.recommendations(summary),
                                  "text": MONITOR.text()})

    return feeder
