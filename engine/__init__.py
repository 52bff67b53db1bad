"""exaone-serve engine: model, KV cache, scheduler, sampler, and the offline LLM API.

One folder per concern: core/ (the request path), kv/, model/, attention/, runner/, sample/, modes/,
text/, parallel/; speculative decoding (issue 22) will live in spec_decode/. The public names below
stay importable from `engine` wherever they live.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.core.outputs import CompletionOutput, RequestOutput
    from engine.core.sampling_params import SamplingParams
    from engine.llm import LLM

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]

_HOMES = {"LLM": "engine.llm", "CompletionOutput": "engine.core.outputs", "RequestOutput": "engine.core.outputs",
          "SamplingParams": "engine.core.sampling_params"}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import engine.model.loader` does not pull in torch models and the sampler.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
