"""Errors the engine raises on purpose, each carrying one readable line for the user."""


class ModelLoadError(Exception):
    """A checkpoint could not be resolved or loaded; the message names the problem."""


class RequestRejected(ValueError):
    """A request can never be served (too long, bigger than the KV pool, bad parameters).

    `param` names the request field at fault, when one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker died or a collective failed: the engine cannot continue."""
