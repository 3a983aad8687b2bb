"""tfyarn's own tensor exchange: ring all-reduce, parameter servers, distributed optimizers.

Independent of the transport that carries the bytes (tcp, grpc, ucx) and of TensorFlow
until Keras pieces are asked for. Entry points used by the launcher:

* :data:`STRATEGY_NAMES`: the names ``tfyarn.run(strategy=...)`` accepts;
* :func:`for_context`: the strategy object a chief/worker's ``ctx.strategy()`` returns;
* :func:`serve_ps`: what a parameter-server role runs;
* :class:`ExchangeContext`: what both take of a role's context (the Protocol the
  launcher's node context and :class:`~tfyarn.exchange.local.LocalContext` implement).
"""

from __future__ import annotations

from tfyarn.exchange.algorithms import ALGORITHMS
from tfyarn.exchange.context import ExchangeContext
from tfyarn.exchange.strategy import ExchangeStrategy, for_context, serve_ps

__all__ = ["STRATEGY_NAMES", "ExchangeContext", "ExchangeStrategy", "for_context", "serve_ps"]

#: Strategy names selectable with ``tfyarn.run(strategy=...)``.
STRATEGY_NAMES: tuple[str, ...] = tuple(ALGORITHMS)
