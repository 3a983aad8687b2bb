"""A Keras callback that feeds the driver's live progress display."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    from tfyarn.node.context import NodeContext

__all__ = ["ProgressCallback"]


class ProgressCallback(keras.callbacks.Callback):
    """Report step, loss and samples to the driver every ``every`` batches.

    Parameters
    ----------
    ctx : NodeContext
        The role's context.
    every : int
        Report period in batches (reports are small, but not free).
    batch_size : int, optional
        Samples per batch, when the batch's logs do not say (Keras 3's do not carry a
        ``size``); None: only what the logs say.
    """

    def __init__(self, ctx: NodeContext, every: int = 10, batch_size: int | None = None) -> None:
        super().__init__()
        self._ctx = ctx
        self._batch_size = batch_size
        self._every = max(1, every)
        self._step = 0
        self._samples = 0
        self._last = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1
        size = (logs or {}).get("size") or self._batch_size
        self._samples += int(size) if size else 0
        if self._step % self._every == 0:
            loss = (logs or {}).get("loss")
            self._ctx.report(
                step=self._step,
                loss=float(loss) if loss is not None else None,
                samples=self._samples or None,
            )
            self._samples = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
        self._ctx.report(epoch=epoch + 1, step=self._step, **metrics)
