"""Rank 0 -> workers: each step's flat tensors over the gloo group, as one header and one int64 payload.

No Python objects cross the wire, only integers: a fixed-length header (the op and every length)
then all of the step's tensors concatenated, so a step costs two broadcasts whatever its size.
"""

from __future__ import annotations

import threading
from enum import IntEnum

import torch
import torch.distributed as dist

from engine.parallel.state import cpu_group
from engine.runner.step_inputs import StepInputs


class Op(IntEnum):
    """What a message asks the workers to do."""

    SHUTDOWN = 0
    STEP = 1
    COPY_BLOCKS = 2


class StepChannel:
    """Both ends of the control channel; `kinds` are the KV pool names, in the same order on every rank."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = sorted(kinds)
        self.header_len = 7 + len(self.kinds)
        self._lock = threading.Lock()  # one message at a time, whichever thread sends it

    # ---- rank 0 -------------------------------------------------------------------------------

    def send_step(self, inputs: StepInputs) -> None:
        """Broadcast a step's inputs."""
        tables = [inputs.block_tables[k] for k in self.kinds]
        header = [Op.STEP, len(inputs.input_ids), len(inputs.seq_lens), inputs.num_decodes,
                  len(inputs.sample_rows), len(inputs.full_rows), len(inputs.spec_rows),
                  *(t.shape[1] for t in tables)]
        payload = torch.cat([inputs.input_ids, inputs.positions, inputs.query_start_loc, inputs.seq_lens,
                             *(t.flatten() for t in tables), *(inputs.slot_mapping[k] for k in self.kinds),
                             torch.tensor(inputs.sample_rows + inputs.full_rows + inputs.spec_rows, dtype=torch.int64)])
        self._send(header, payload)

    def send_copies(self, copies: list[tuple[str, int, int]]) -> None:
        """Broadcast block copies (kind, src, dst) that every rank applies to its own cache."""
        flat = [x for kind, src, dst in copies for x in (self.kinds.index(kind), src, dst)]
        self._send([Op.COPY_BLOCKS, len(copies)], torch.tensor(flat, dtype=torch.int64))

    def send(self, op: Op) -> None:
        """A message without payload (shutdown)."""
        self._send([op], None)

    def _send(self, header: list[int], payload: torch.Tensor | None) -> None:
        with self._lock:
            head = torch.zeros(self.header_len, dtype=torch.int64)
            head[: len(header)] = torch.tensor([int(x) for x in header])
            dist.broadcast(head, 0, group=cpu_group())
            if payload is not None and payload.numel():
                dist.broadcast(payload, 0, group=cpu_group())

    # ---- workers ------------------------------------------------------------------------------

    def recv(self) -> tuple[Op, StepInputs | list[tuple[str, int, int]] | None]:
        """Wait for the next message: (op, StepInputs for a step, copies for COPY_BLOCKS, else None)."""
        head = torch.zeros(self.header_len, dtype=torch.int64)
        dist.broadcast(head, 0, group=cpu_group())
        op, *sizes = head.tolist()
        op = Op(op)
        if op == Op.COPY_BLOCKS:
            flat = self._recv_payload(3 * sizes[0]).view(-1, 3).tolist()
            return op, [(self.kinds[k], src, dst) for k, src, dst in flat]
        if op != Op.STEP:
            return op, None
        num_tokens, num_seqs, num_decodes, num_sample, num_full, num_spec, *widths = sizes
        lengths = [num_tokens, num_tokens, num_seqs + 1, num_seqs, *(num_seqs * w for w in widths),
                   *[num_tokens] * len(self.kinds), num_sample + num_full + num_spec]
        parts = self._recv_payload(sum(lengths)).split(lengths)
        ids, positions, cu, seq_lens = parts[:4]
        n = len(self.kinds)
        tables = {k: t.view(num_seqs, w) for k, t, w in zip(self.kinds, parts[4 : 4 + n], widths, strict=True)}
        slots = dict(zip(self.kinds, parts[4 + n : 4 + 2 * n], strict=True))
        rows = parts[-1].tolist()
        return op, StepInputs(ids, positions, cu, seq_lens, tables, slots, num_decodes, rows[:num_sample],
                              rows[num_sample : num_sample + num_full], rows[num_sample + num_full :])

    @staticmethod
    def _recv_payload(numel: int) -> torch.Tensor:
        payload = torch.empty(numel, dtype=torch.int64)
        if numel:
            dist.broadcast(payload, 0, group=cpu_group())
        return payload
