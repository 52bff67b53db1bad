"""Graceful shutdown: uvicorn that drains the engine on SIGTERM/SIGINT instead of cutting its streams.

First signal: the app stops admitting (503 with Retry-After, /health 503 "draining"), requests in flight
run on until they finish or the grace period ends; then whatever still runs is cut (streams get a last
chunk with finish_reason "abort" and [DONE], bodies a 503 error) and uvicorn closes the connections.
Second signal: cut at once (the same last chunks), and a third stops waiting for connections. An engine that dies also ends the server (its streams got their error events).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from server.openai.serving import ServerState

logger = logging.getLogger("exaone-serve")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After the cut, how long uvicorn waits for connections to send their last bytes before cancelling them.
CLOSE_TIMEOUT_S = 5.0


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with the drain above; `exit_signal` says which signal stopped it (None: none did)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float) -> None:
        config.timeout_graceful_shutdown = CLOSE_TIMEOUT_S
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self.exit_signal: int | None = None
        self.engine_died = False
        self._deadline: float | None = None
        self._hurry = False

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Own SIGINT/SIGTERM while serving; unlike uvicorn, do not re-raise them after: the CLI picks the exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: the first signal starts the drain, the second ends it at once."""
        # It runs between two bytecodes of the event loop's thread: set flags only; on_tick acts on them.
        if self.exit_signal is None:
            self.exit_signal = sig
        elif self.should_exit:
            self.force_exit = True  # uvicorn stops waiting for connections
        else:
            self._hurry = True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s tick: advance the drain, and stop when the engine has died."""
        if not self.should_exit:
            engine = self.state.engine
            if engine is not None and engine.error is not None:
                logger.error("the engine stopped after an error; shutting down")
                self.engine_died = self.should_exit = True
            elif self.exit_signal is not None:
                self._drain_tick()
        return await super().on_tick(counter)

    def _drain_tick(self) -> None:
        engine = self.state.engine
        if engine is None:  # still loading: nothing to drain
            self.should_exit = True
            return
        now = time.monotonic()
        in_flight = len(self.server_state.tasks)  # HTTP requests being answered
        if self._deadline is None:
            self._deadline = now + self.shutdown_timeout
            engine.drain()
            logger.info("%s: draining %d request(s) for up to %g s; send it again to exit at once",
                        signal.Signals(self.exit_signal).name, in_flight, self.shutdown_timeout)
        if not in_flight:
            self.should_exit = True
        elif self._hurry or now >= self._deadline:
            logger.warning("%s: ending %d request(s) still running", "second signal" if self._hurry else
                           "shutdown timeout", in_flight)
            engine.cut()
            self.should_exit = True
