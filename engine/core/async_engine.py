"""AsyncEngine: LLMEngine's step loop on a background thread, one asyncio stream of deltas per request."""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from engine.config import resolve_device
from engine.core.llm_engine import LLMEngine
from engine.core.outputs import CompletionOutput, RequestOutput
from engine.core.sampling_params import SamplingParams
from engine.errors import RequestRejected

logger = logging.getLogger(__name__)


class EngineOverloaded(Exception):
    """The waiting queue is full; the caller should retry later."""


class EngineDraining(EngineOverloaded):
    """The server is shutting down and admits no new request; the client should retry elsewhere."""


class EngineDead(Exception):
    """The step loop crashed; no request can be served."""


class AsyncEngine:
    """Thread-safe front of an LLMEngine for asyncio servers.

    The model runs on one background thread (torch releases the GIL), so the event loop keeps
    serving HTTP while a step computes. Adds and aborts go through an inbox drained between steps.
    With start=False the caller runs `run_loop()` on a thread of its choice: best the thread that
    loaded the model, because libgomp throttles its spin-waits (and small CPU ops get ~4x slower)
    once two threads own OpenMP pools on a machine with few cores.
    """

    def __init__(self, engine: LLMEngine, max_queued_requests: int | None = None, start: bool = True) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_queued_requests = max_queued_requests
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending = 0  # accepted, not yet handed to the scheduler
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopped = False
        self.draining = False
        self._cut: set[str] = set()  # requests ended by cut(), filled only at shutdown
        self.error: BaseException | None = None
        self._stats: dict[str, Any] = engine.stats()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self.run_loop, name="exaone-engine", daemon=True)
            self._thread.start()

    # ---- called from the event loop ---------------------------------------------------------

    def submit(self, prompt: str | list[int], params: SamplingParams,
               request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Validate and queue a request now (raising RequestRejected / EngineOverloaded at once).

        Returns its stream of deltas; leaving the stream early aborts the request."""
        if self.error is not None:
            raise EngineDead(f"engine stopped after an error: {self.error}")
        if self.draining:
            raise EngineDraining("the server is shutting down")
        request_id = request_id or f"req-{next(self._ids)}"
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.engine.validate(prompt_ids, params)
        with self._lock:
            if self.max_queued_requests is not None and \
                    self._pending + self._stats["waiting"] >= self.max_queued_requests:
                raise EngineOverloaded(f"{self.max_queued_requests} requests are already waiting")
            self._pending += 1
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), q)
        self._inbox.put(("add", (request_id, prompt_ids, params)))
        self._wake.set()
        return self._drain(request_id, q)

    async def _drain(self, request_id: str, q: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Ask the loop to stop a request; its blocks are freed before the next step."""
        # A stream closed before its first read never runs its cleanup: drop it here too.
        self._streams.pop(request_id, None)
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def drain(self) -> None:
        """Admit no new request (submit raises EngineDraining); the ones in flight go on."""
        self.draining = True

    def cut(self) -> None:
        """End every request now: each stream gets a last output with finish_reason "abort"."""
        self._inbox.put(("cut", None))
        self._wake.set()

    def was_cut(self, request_id: str) -> bool:
        """True when cut() ended this request before it finished."""
        return request_id in self._cut

    def reset_prefix_cache(self) -> None:
        """Ask the loop to forget every cached prefix before the next step."""
        self._inbox.put(("reset_prefix_cache", None))
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """The engine's counters as of the last step, and whether it is draining."""
        return {**self._stats, "draining": self.draining}

    def shutdown(self) -> None:
        """Stop the loop (and join its thread when this engine started one)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- the loop thread --------------------------------------------------------------------

    def run_loop(self) -> None:
        """The step loop; returns after shutdown() or a crash."""
        resolve_device(self.engine.device)  # this thread launches the kernels
        try:
            while not self._stopped:
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self._stats = self.engine.stats()
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
                    continue
                outputs = self.engine.step()
                self._stats = self.engine.stats()
                self._send_step(outputs)
        except BaseException as e:  # a crash must reach every waiting client, not hang them
            logger.exception("engine loop crashed")
            self.error = e
            for request_id in list(self._streams):
                self._send(request_id, EngineDead(f"engine stopped after an error: {e}"))

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                self.engine.abort(payload)
                continue
            if kind == "cut":
                self._cut_all()
                continue
            if kind == "reset_prefix_cache":
                self.engine.reset_prefix_cache()
                continue
            request_id, prompt_ids, params = payload
            with self._lock:
                self._pending -= 1
            if request_id not in self._streams:
                continue  # the client left before the request started
            try:
                self.engine.add_request(request_id, prompt_ids, params)
            except RequestRejected as e:
                self._send(request_id, e)

    def _cut_all(self) -> None:
        for request_id, seqs in list(self.engine.requests.items()):
            ended = [CompletionOutput(s.index, "", [], None, "abort") for s in seqs if not s.is_finished]
            prompt_ids = self.engine.prompts[request_id]
            self.engine.abort(request_id)
            self._cut.add(request_id)
            self._send(request_id, RequestOutput(request_id, prompt_ids, ended, finished=True))

    def _send_step(self, outputs: list[RequestOutput]) -> None:
        """A step's outputs in one wake-up per event loop (not one per request: the loop and the
        engine share the cores, and each wake-up costs the engine thread the GIL)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outputs:
            target = self._streams.get(out.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # its event loop is closed (a server stopped mid-request): nobody reads these
                for _, out in items:
                    self._streams.pop(out.request_id, None)
                    self.engine.abort(out.request_id)

    def _send(self, request_id: str, item: RequestOutput | BaseException) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # its event loop is closed (a server stopped mid-request): nobody reads it
                self._streams.pop(request_id, None)
                self.engine.abort(request_id)


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for q, item in items:
        q.put_nowait(item)
