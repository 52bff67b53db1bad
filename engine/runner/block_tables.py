"""Persistent block tables: one pool's tables as rows of an int64 array that lives across steps.

The KV manager keeps each sequence's table as a Python list (engine.kv.kv_cache.BlockTable) and notes the
entries it writes in place (`changed`). A step's tables were rebuilt from those lists, padded to the widest:
at 64 sequences x 128K tokens that is ~0.5M Python ints per pool per step. Here a table gets a row the first
time a step reads it, and after that only its changed entries are written; a step's [num_seqs, width] tensor
is one gather of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.kv.kv_cache import BlockTable

PAD_ROW = 0  # always -1: the rows of padding sequences (a captured graph's spare rows)


@dataclass(slots=True)
class _Row:
    index: int
    table: BlockTable  # held, so that its id() is not reused by a new table while this row stands for it
    last_step: int


class BlockTableMirror:
    """Rows mirroring one pool's BlockTable lists: row[e] == table[e] for e < len(table), -1 beyond."""

    def __init__(self, num_rows: int, width: int) -> None:
        self.array = np.full((num_rows + 1, max(width, 1)), -1, dtype=np.int64)
        # By the table's id(). A row whose table is gone (freed, preempted) or idle longest is taken first.
        self._rows: dict[int, _Row] = {}
        self._free = list(range(num_rows, PAD_ROW, -1))
        self._used = [0] * (num_rows + 1)  # per row: entries at and past this are -1
        self._step = 0

    def gather(self, tables: Sequence[BlockTable], num_pad: int = 0) -> torch.Tensor:
        """The step's tables, then num_pad padding rows, as [rows, widest table] int64 (-1 where none is held):
        what padding each list to the widest gives."""
        self._step += 1
        rows = [self._sync(bt) for bt in tables] + [PAD_ROW] * num_pad
        width = max([len(bt.table) for bt in tables] + [1] * (num_pad > 0), default=1)
        return torch.from_numpy(np.take(self.array[:, :width], rows, axis=0))

    def _sync(self, bt: BlockTable) -> int:
        """The row holding bt, brought up to date."""
        hit = self._rows.get(id(bt))
        if hit is not None:
            hit.last_step = self._step
            if bt.changed:
                self._write_changed(hit.index, bt)
            return hit.index
        n = len(bt.table)
        if n > self.array.shape[1]:
            self._widen(n)
        row = self._take_row()
        self.array[row, n : self._used[row]] = -1  # what the row's previous table left
        self.array[row, :n] = bt.table
        self._used[row] = n
        bt.changed.clear()
        self._rows[id(bt)] = _Row(row, bt, self._step)
        return row

    def _write_changed(self, row: int, bt: BlockTable) -> None:
        n, changed = len(bt.table), bt.changed
        reach = max(n, max(changed) + 1)  # a trimmed table's changes reach past its end
        if reach > self.array.shape[1]:
            self._widen(reach)
        self.array[row, changed] = [bt.table[e] if e < n else -1 for e in changed]  # past the end: popped
        self._used[row] = max(self._used[row], n)
        changed.clear()

    def _take_row(self) -> int:
        if self._free:
            return self._free.pop()
        key, oldest = min(self._rows.items(), key=lambda item: item[1].last_step)
        if oldest.last_step == self._step:  # every row is read by this step: make room
            self._grow()
            return self._free.pop()
        del self._rows[key]  # its table, if it still runs, gets a new row in full when a step next reads it
        return oldest.index

    def _grow(self) -> None:
        num_rows = len(self.array)
        self.array = np.concatenate([self.array, np.full_like(self.array, -1)])
        self._used += [0] * num_rows
        self._free += range(2 * num_rows - 1, num_rows - 1, -1)

    def _widen(self, width: int) -> None:
        extra = np.full((len(self.array), max(width, 2 * self.array.shape[1]) - self.array.shape[1]), -1, np.int64)
        self.array = np.concatenate([self.array, extra], axis=1)
