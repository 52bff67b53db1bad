"""Errors the engine raises on purpose, each carrying one readable line for the user."""


class ModelLoadError(Exception):
    """A checkpoint could not be resolved or loaded; the message names the problem."""


class RequestRejected(ValueError):
    """A request can never be served (too long, bigger than the KV pool, bad parameters)."""


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker died or a collective failed: the engine cannot continue."""
