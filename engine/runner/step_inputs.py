"""StepInputs: one step's flat host tensors, what rank 0 builds and tensor-parallel workers receive."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepInputs:
    """One step's flat host tensors: all a rank needs to run the model (tensor-parallel workers get these)."""

    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    query_start_loc: torch.Tensor  # [num_seqs + 1]
    seq_lens: torch.Tensor  # [num_seqs]
    block_tables: dict[str, torch.Tensor]  # per pool: [num_seqs, width], -1 where no block is held
    slot_mapping: dict[str, torch.Tensor]  # per pool: [num_tokens]
    num_decodes: int
    sample_rows: list[int] = field(default_factory=list)  # sequences whose last token is sampled
    full_rows: list[int] = field(default_factory=list)  # sequences that want every token's logits
    # Sample rows that verify drafted tokens: every new token of theirs is sampled, not only the last.
    spec_rows: list[int] = field(default_factory=list)
