"""make_spec_decoder: the proposer a SpeculativeConfig names, wrapped in the engine's SpecDecoder."""

from __future__ import annotations

import torch

from engine.config import EngineConfig, ModelConfig
from engine.spec_decode.config import SpeculativeConfig
from engine.spec_decode.draft_model import DraftModelProposer
from engine.spec_decode.ngram import NgramProposer
from engine.spec_decode.proposer import Proposer
from engine.spec_decode.spec_decoder import SpecDecoder


def make_spec_decoder(spec: SpeculativeConfig, target: ModelConfig, cfg: EngineConfig, dtype: torch.dtype,
                      device: torch.device, progress: bool = False) -> SpecDecoder:
    """Build the drafter (loading the draft model, if one is named) for an engine of this config."""
    proposer: Proposer
    if spec.method == "ngram":
        proposer = NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    else:
        assert spec.model is not None
        proposer = DraftModelProposer(spec.model, target, cfg, spec.draft_kv_cache_memory, dtype, device, progress)
    assert cfg.max_model_len is not None
    return SpecDecoder(spec, proposer, device, cfg.max_model_len, target.vocab_size)
