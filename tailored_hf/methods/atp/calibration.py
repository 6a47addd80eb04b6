"""The cycled calibration loader of ATP's generator steps (deterministic, resumable from a counter)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


class EmptyCalibrationError(ValueError):
    """The calibration data yields no batch."""


class CalibrationStream:
    """Cycles over calibration sequences in seeded, per-epoch shuffled batches.

    Args:
        data: a LongTensor `[n, L]`; a sequence of token-id lists / 1-D tensors (lengths may differ, batches are
            right-padded); a sequence of dicts with `input_ids` (and optionally `labels`), e.g. a tokenized
            `datasets.Dataset`; or any re-iterable loader (e.g. a `DataLoader`) yielding such dict batches.
        batch_size: sequences per batch (ignored for loaders, which batch themselves).
        seed: the shuffle seed (epoch `e` uses `seed + e`).
        full_sequence_loss: labels are the whole (non-padded) sequence; otherwise a row's own `labels` when given.

    The position is one integer (`batches_drawn`), saved in checkpoints; resuming replays the same order.
    """

    def __init__(self, data: Any, batch_size: int, seed: int = 0, full_sequence_loss: bool = True) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.full_sequence_loss = full_sequence_loss
        self.batches_drawn = 0
        self._loader: Iterable | None = None
        self._iterator = None
        self._rows: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        if torch.is_tensor(data):
            if data.dim() != 2 or data.numel() == 0:
                raise EmptyCalibrationError(
                    f"Calibration tensor must be a non-empty LongTensor [n, seq_len], got shape {tuple(data.shape)}."
                )
            self._rows = [(row.long(), None) for row in data]
        elif isinstance(data, Sequence) or _is_dataset(data):
            self._rows = [_row(item) for item in data]
        elif isinstance(data, Iterable):
            self._loader = data
            if _first(data) is None:
                raise EmptyCalibrationError("The calibration loader is empty: it yielded no batch.")
        else:
            raise TypeError(
                f"Unsupported calibration data {type(data).__name__}: pass a LongTensor [n, L], a list of token-id "
                "lists, a tokenized dataset with `input_ids`, or a DataLoader of dict batches."
            )
        if self._loader is None:
            if not self._rows:
                raise EmptyCalibrationError("The calibration data is empty: it holds no sequence.")
            short = [i for i, (ids, _) in enumerate(self._rows) if ids.numel() < 2]
            if short:
                raise ValueError(f"Calibration rows {short[:5]} have fewer than 2 tokens (no next-token target).")

    def __len__(self) -> int:
        """Batches per epoch (loaders: unknown -> 0)."""
        if self._loader is not None:
            return 0
        return -(-len(self._rows) // self.batch_size)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch `{"input_ids", "attention_mask", "labels"}`, cycling forever."""
        batch = self._batch_at(self.batches_drawn)
        self.batches_drawn += 1
        return batch

    def fixed_batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        """The first `count` batches of epoch 0 (without moving the stream): a fixed evaluation set."""
        if self._loader is not None:
            batches = []
            for batch in self._loader:
                batches.append(self._from_loader(batch))
                if len(batches) == count:
                    break
            return batches
        return [self._batch_at(i) for i in range(min(count, len(self)))]

    def seek(self, batches_drawn: int) -> None:
        """Resume at a position (as saved in `batches_drawn`)."""
        self.batches_drawn = int(batches_drawn)
        self._iterator = None

    # ------------------------------------------------------------------ internals
    def _batch_at(self, position: int) -> dict[str, torch.Tensor]:
        if self._loader is not None:
            return self._loader_batch(position)
        per_epoch = len(self)
        epoch, index = divmod(position, per_epoch)
        order = torch.randperm(len(self._rows), generator=torch.Generator().manual_seed(self.seed + epoch))
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
        return self._collate([self._rows[i] for i in chosen])

    def _loader_batch(self, position: int) -> dict[str, torch.Tensor]:
        if self._iterator is None or getattr(self, "_iterator_position", None) != position:
            self._iterator = iter(self._loader)
            for _ in range(position):  # replay (cycled) up to `position`
                self._advance()
            self._iterator_position = position
        batch = self._advance()
        self._iterator_position = position + 1
        return self._from_loader(batch)

    def _advance(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self._loader)
            try:
                return next(self._iterator)
            except StopIteration:
                raise EmptyCalibrationError("The calibration loader is empty: it yielded no batch.") from None

    def _from_loader(self, batch: Any) -> dict[str, torch.Tensor]:
        if torch.is_tensor(batch):
            return self._collate([(row.long(), None) for row in batch])
        if isinstance(batch, Mapping) and "input_ids" in batch:
            ids = torch.as_tensor(batch["input_ids"]).long()
            mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids))).long()
            labels = batch.get("labels")
            if self.full_sequence_loss or labels is None:
                labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
            return {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor(labels).long()}
        raise TypeError(f"Calibration batches must be tensors or dicts with `input_ids`, got {type(batch).__name__}.")

    def _collate(self, rows: list[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        length = max(ids.numel() for ids, _ in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, row_labels) in enumerate(rows):
            n = row.numel()
            ids[i, :n], mask[i, :n] = row, 1
            use_own = row_labels is not None and not self.full_sequence_loss
            labels[i, :n] = row_labels if use_own else row
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _row(item: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, Mapping):
        if "input_ids" not in item:
            raise ValueError(f"Calibration rows need `input_ids`; got columns {sorted(item)}.")
        labels = item.get("labels")
        ids = torch.as_tensor(item["input_ids"]).long().flatten()
        return ids, None if labels is None else torch.as_tensor(labels).long().flatten()
    return torch.as_tensor(item).long().flatten(), None


def _first(loader: Iterable) -> Any:
    for batch in loader:
        return batch
    return None
