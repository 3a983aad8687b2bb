"""Horovod's gradient path, shared by ``DistributedOptimizer`` and ``DistributedGradientTape``.

:func:`gradient_reduction` checks a gradient API's arguments and returns its
:class:`GradientReduction` (compress, sum or average, scale, decompress);
:func:`distributed_keras_optimizer` makes a Keras 3 optimizer reduce its gradients so.
TensorFlow and Keras are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tfyarn.errors import ConfigError
from tfyarn.horovod._checks import check_unsupported
from tfyarn.horovod._compression import NoneCompressor
from tfyarn.horovod._reduce_ops import ReduceOp, resolve_op
from tfyarn.horovod._state import require_state

if TYPE_CHECKING:
    from tfyarn.exchange.strategy import ExchangeStrategy

__all__ = [
    "GradientReduction",
    "distributed_keras_optimizer",
    "gradient_reduction",
]


@dataclass(frozen=True)
class GradientReduction:
    """How Horovod reduces gradients: compress, sum or average, scale, decompress.

    Attributes
    ----------
    op : ReduceOp
        Average or Sum.
    compression : Compressor
        Applied before the exchange and undone after.
    predivide : float
        Horovod's ``gradient_predivide_factor``: divide by it before summing and by
        ``size / predivide`` after (Average only).
    local_scale : float
        Multiplies every gradient first (``backward_passes_per_step`` without
        ``average_aggregated_gradients``: Keras averages the accumulated gradients,
        Horovod sums them).
    """

    op: ReduceOp
    compression: Any
    predivide: float = 1.0
    local_scale: float = 1.0

    def reduce(self, strategy: ExchangeStrategy, grads: Sequence[Any]) -> list[Any]:
        """Reduce ``grads`` (tensors, IndexedSlices or None) over every rank, fused."""
        import tensorflow as tf

        from tfyarn.exchange.keras import allreduce_tensors

        out: list[Any] = list(grads)
        present = [i for i, g in enumerate(out) if g is not None]
        if not present:
            return out
        packed, ctxs = [], []
        prescale = self.local_scale / self.predivide
        for i in present:
            g = tf.convert_to_tensor(out[i])  # sparse gradients are exchanged dense
            if prescale != 1.0:
                g = g * tf.cast(prescale, g.dtype)
            c, ctx = self.compression.compress(g)
            packed.append(c)
            ctxs.append(ctx)
        # Average without a predivide factor averages on the ring; with one, the ring sums
        # what was divided by the factor, and the rest of the division comes after
        predivided = self.op is ReduceOp.AVERAGE and self.predivide != 1.0
        average = self.op is ReduceOp.AVERAGE and not predivided
        reduced = allreduce_tensors(strategy, packed, average=average)
        postscale = self.predivide / strategy.size if predivided else 1.0
        for i, r, ctx in zip(present, reduced, ctxs, strict=True):
            g = self.compression.decompress(r, ctx)
            out[i] = g * tf.cast(postscale, g.dtype) if postscale != 1.0 else g
        return out


def gradient_reduction(
    api: str,
    *,
    compression: Any = NoneCompressor,
    op: Any = ReduceOp.AVERAGE,
    gradient_predivide_factor: float = 1.0,
    **unsupported: Any,
) -> GradientReduction:
    """Check a gradient API's arguments (``api`` names it in errors); its reduction.

    Raises
    ------
    ConfigError
        An argument tfyarn cannot honour, Adasum/Min/Max/Product, or a predivide factor
        with Sum.
    """
    check_unsupported(api, **unsupported)
    reduce_op = resolve_op(op, gradients=True)
    if gradient_predivide_factor != 1.0 and reduce_op is not ReduceOp.AVERAGE:
        raise ConfigError(
            f"{api}(gradient_predivide_factor={gradient_predivide_factor}) needs op=hvd.Average"
        )
    if gradient_predivide_factor <= 0:
        raise ConfigError(f"{api}: gradient_predivide_factor must be positive")
    if not (hasattr(compression, "compress") and hasattr(compression, "decompress")):
        raise ConfigError(
            f"{api}(compression={compression!r}): use hvd.Compression.none or "
            "hvd.Compression.fp16 (or an object with compress/decompress)"
        )
    return GradientReduction(reduce_op, compression, float(gradient_predivide_factor))


def distributed_keras_optimizer(
    optimizer: Any,
    reduction: GradientReduction,
    backward_passes_per_step: int = 1,
    average_aggregated_gradients: bool = False,
) -> Any:
    """Make a Keras 3 optimizer reduce its gradients as ``reduction`` says (patched in place).

    ``backward_passes_per_step=N`` uses Keras' own ``gradient_accumulation_steps=N``: the
    reduced gradients of N steps are accumulated and applied once, averaged over the N
    (``average_aggregated_gradients=True``) or summed (False, Horovod's default). Unlike
    Horovod, tfyarn reduces at every step, not only every N-th.

    Returns
    -------
    keras.optimizers.Optimizer
        The same object, so that its class, config and ``model.save`` stay unchanged.

    Raises
    ------
    ConfigError
        Not a Keras 3 optimizer, wrapped already, or an accumulation that cannot be set.
    """
    import keras

    from tfyarn.exchange.keras import _PATCHED

    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(
            f"DistributedOptimizer needs a Keras 3 optimizer (keras.optimizers.SGD, Adam, "
            f"...), got {type(optimizer).__module__}.{type(optimizer).__name__}; TF1 "
            "tf.compat.v1.train optimizers are not supported"
        )
    if getattr(optimizer, _PATCHED, None) is not None:
        raise ConfigError("this optimizer is already distributed; wrap it once")
    if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
        raise ConfigError(
            f"backward_passes_per_step must be a positive integer, got {backward_passes_per_step!r}"
        )
    strategy, _ = require_state()
    if backward_passes_per_step > 1:
        current = optimizer.gradient_accumulation_steps
        if current not in (None, backward_passes_per_step):
            raise ConfigError(
                f"backward_passes_per_step={backward_passes_per_step} but the optimizer "
                f"accumulates over gradient_accumulation_steps={current}: give one of them"
            )
        if optimizer.built and current is None:
            raise ConfigError(
                "backward_passes_per_step needs an optimizer that has not taken a step yet: "
                "wrap it before training (or create it with gradient_accumulation_steps=N)"
            )
        optimizer.gradient_accumulation_steps = backward_passes_per_step
        if not average_aggregated_gradients:
            reduction = GradientReduction(
                reduction.op, reduction.compression, reduction.predivide,
                float(backward_passes_per_step),
            )  # fmt: skip
    object.__setattr__(optimizer, _PATCHED, strategy)
    original_apply = optimizer.apply

    def apply(grads: Any, trainable_variables: Any = None) -> Any:
        return original_apply(reduction.reduce(strategy, list(grads)), trainable_variables)

    object.__setattr__(optimizer, "apply", apply)
    return optimizer
