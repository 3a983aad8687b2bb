"""What ``tfyarn.horovod.keras`` and ``tfyarn.horovod.tensorflow`` share: one place each.

* the per-process Horovod state: which tfyarn role ``init()`` found, and its topology
  (:class:`Topology`, from the hosts of the training roles);
* the reduction operations (:class:`ReduceOp`) and gradient compression
  (:class:`Compression`);
* the collectives on NumPy arrays over a role's ring (:func:`allgather_array`,
  :func:`reduce_array`, :func:`reducescatter_array`, :func:`broadcast_object_on`,
  :func:`allgather_object_on`, :func:`join_on`): pure functions of a
  :class:`~tfyarn.exchange.collectives.Collectives`, so that they run the same under
  ``tfyarn.run`` and in-process (``run_local(threads=True)``);
* the same collectives as TensorFlow ops (one ``tf.numpy_function`` each, so that they
  work eagerly and inside ``tf.function``);
* Horovod's gradient path (:class:`GradientReduction`), used by ``DistributedOptimizer``
  and ``DistributedGradientTape``, and the argument checks that refuse what tfyarn cannot
  honour (:func:`check_unsupported`).

TensorFlow and Keras are imported inside the functions that need them: importing
``tfyarn.horovod`` (e.g. on the Spark driver, for ``tfyarn.horovod.spark.run``) stays cheap.
"""

from __future__ import annotations

import contextlib
import enum
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from tfyarn.exchange.collectives import Collectives
    from tfyarn.exchange.strategy import ExchangeStrategy

__all__ = [
    "Compression",
    "Compressor",
    "FP16Compressor",
    "GradientReduction",
    "NoneCompressor",
    "ProcessSet",
    "ReduceOp",
    "Topology",
    "UnsupportedError",
    "allgather",
    "allgather_array",
    "allgather_object",
    "allgather_object_on",
    "allreduce",
    "barrier",
    "bind_context",
    "broadcast",
    "broadcast_object",
    "broadcast_object_on",
    "broadcast_variables",
    "check_unsupported",
    "cross_rank",
    "cross_size",
    "distributed_keras_optimizer",
    "global_process_set",
    "gradient_reduction",
    "init",
    "is_initialized",
    "join",
    "join_on",
    "local_rank",
    "local_size",
    "rank",
    "reduce_array",
    "reducescatter",
    "reducescatter_array",
    "require_state",
    "shutdown",
    "size",
    "topology",
    "unsupported_attribute",
]

LAUNCH_HINT = (
    "launch the program with tfyarn.horovod.spark.run(fn, num_proc=N), or call hvd.init() "
    "inside the train_fn of tfyarn.run(spark, train_fn, workers=N, strategy='allreduce')"
)


class UnsupportedError(ConfigError, AttributeError):
    """A Horovod API tfyarn does not provide (an ``AttributeError`` too, for ``hasattr``)."""


# -- topology --------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """Where one rank sits among the training roles, in Horovod's terms.

    Attributes
    ----------
    rank, size : int
        Position among all ranks, and their number.
    local_rank, local_size : int
        Position among the ranks on the same host (by rank), and their number.
    cross_rank, cross_size : int
        Position among the ranks with the same ``local_rank`` (one per host that has
        that many ranks), and their number: Horovod's "cross" communicator.
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def topology(hosts: Sequence[str], rank: int) -> Topology:
    """The :class:`Topology` of ``rank`` when rank ``r`` runs on ``hosts[r]``.

    Raises
    ------
    ConfigError
        ``rank`` is not a position in ``hosts``.
    """
    if not 0 <= rank < len(hosts):
        raise ConfigError(f"rank {rank} is not one of the {len(hosts)} ranks")
    seen: dict[str, int] = {}
    local: list[int] = []  # each rank's position on its host
    for host in hosts:
        local.append(seen.get(host, 0))
        seen[host] = local[-1] + 1
    cross = [r for r in range(len(hosts)) if local[r] == local[rank]]
    return Topology(
        rank=rank,
        size=len(hosts),
        local_rank=local[rank],
        local_size=seen[hosts[rank]],
        cross_rank=cross.index(rank),
        cross_size=len(cross),
    )


# -- reduction operations and compression ------------------------------------------------


class ReduceOp(enum.IntEnum):
    """Horovod's reduction operations (``hvd.Average``, ``hvd.Sum``, ...)."""

    AVERAGE = 0
    SUM = 1
    ADASUM = 2
    MIN = 3
    MAX = 4
    PRODUCT = 5


#: Reductions computed from an all-gather (the ring adds; these need every value).
_GATHERED_OPS: dict[ReduceOp, Callable[..., np.ndarray]] = {
    ReduceOp.MIN: np.min,
    ReduceOp.MAX: np.max,
    ReduceOp.PRODUCT: np.prod,
}


def resolve_op(op: Any, average: bool | None = None, *, gradients: bool = False) -> ReduceOp:
    """The :class:`ReduceOp` of Horovod's ``op=``/``average=`` pair (``op=None``: Average).

    Parameters
    ----------
    op : ReduceOp, int or None
        ``hvd.Average``, ``hvd.Sum``, ``hvd.Min``, ``hvd.Max``, ``hvd.Product``.
    average : bool, optional
        Horovod's older spelling: True for Average, False for Sum.
    gradients : bool
        For gradients (``DistributedOptimizer``, ``DistributedGradientTape``): Average or
        Sum only.

    Raises
    ------
    ConfigError
        Both given, Adasum, an unknown value, or a non-additive op for gradients.
    """
    if average is not None:
        if op is not None:
            raise ConfigError("give op= or the older average=, not both (op=hvd.Average)")
        return ReduceOp.AVERAGE if average else ReduceOp.SUM
    if op is None:
        return ReduceOp.AVERAGE
    try:
        resolved = ReduceOp(int(op))
    except (TypeError, ValueError):
        raise ConfigError(
            f"op={op!r} is not a Horovod reduction: use hvd.Average, hvd.Sum, hvd.Min, "
            "hvd.Max or hvd.Product"
        ) from None
    if resolved is ReduceOp.ADASUM:
        raise ConfigError(
            "op=hvd.Adasum is not supported by tfyarn (its ring adds or averages): use "
            "op=hvd.Average, and scale the learning rate by hvd.size() as with Average"
        )
    if gradients and resolved not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ConfigError(
            f"op=hvd.{resolved.name.title()} cannot reduce gradients: use op=hvd.Average "
            "(or hvd.Sum)"
        )
    return resolved


class Compressor:
    """Horovod's compressor interface: ``compress`` before the exchange, ``decompress`` after.

    Both work on TensorFlow tensors (as TensorFlow ops); a subclass may define its own.
    """

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        """Return the tensor to exchange and what :meth:`decompress` needs."""
        return tensor, None

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        """Undo :meth:`compress` on the exchanged tensor."""
        return tensor


class NoneCompressor(Compressor):
    """Exchange tensors as they are."""


class FP16Compressor(Compressor):
    """Exchange floating-point tensors as float16 (half the bytes), cast back after."""

    @staticmethod
    def compress(tensor: Any) -> tuple[Any, Any]:
        """Cast a floating tensor to float16; keep its dtype to cast back."""
        import tensorflow as tf

        dtype = tensor.dtype
        if dtype.is_floating and dtype != tf.float16:
            return tf.cast(tensor, tf.float16), dtype
        return tensor, None

    @staticmethod
    def decompress(tensor: Any, ctx: Any) -> Any:
        """Cast back to the dtype :meth:`compress` kept."""
        import tensorflow as tf

        return tensor if ctx is None else tf.cast(tensor, ctx)


class Compression:
    """``hvd.Compression.none`` and ``hvd.Compression.fp16``."""

    none: type[Compressor] = NoneCompressor
    fp16: type[Compressor] = FP16Compressor


class ProcessSet:
    """Horovod's process set; tfyarn has only the global one (every rank)."""

    def __init__(self, ranks: Sequence[int] | None = None) -> None:
        if ranks is not None:
            raise ConfigError(
                "tfyarn.horovod has only the global process set (every rank): leave "
                "process_set= out, or run a separate tfyarn.horovod.spark.run for the subset"
            )
        self.ranks = None

    def __repr__(self) -> str:
        return "ProcessSet(global)"


#: The only process set: every rank.
global_process_set = ProcessSet()


# -- argument checks ----------------------------------------------------------------------

#: Horovod arguments with the values tfyarn honours, and what to do otherwise. An argument
#: given any other value is refused by :func:`check_unsupported`: none is ignored.
_ACCEPTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "device_dense": (("", None), "tfyarn reduces on the host CPU; leave device_dense out"),
    "device_sparse": (("", None), "tfyarn reduces on the host CPU; leave device_sparse out"),
    "device": (("", None), "tfyarn broadcasts from the host CPU; leave device out"),
    "num_groups": (
        (0, None),
        "tfyarn always fuses every gradient into one buffer per dtype; leave num_groups out",
    ),
    "groups": (
        (None,),
        "tfyarn always fuses every gradient into one buffer per dtype; leave groups out",
    ),
    "scale_local_gradients": (
        (True,),
        "tfyarn has no local (unreduced) variables; leave scale_local_gradients out",
    ),
    "use_locking": ((False,), "TF1 locking optimizers are not supported; leave use_locking out"),
    "session": ((None,), "TF1 sessions are not supported: run eagerly or in tf.function"),
    "comm": ((None,), "tfyarn has no MPI communicator: " + LAUNCH_HINT),
    "process_sets": (
        (None,),
        "tfyarn.horovod has only the global process set: leave process_sets out",
    ),
}


def check_unsupported(api: str, **given: Any) -> None:
    """Refuse every argument of ``api`` set to a value tfyarn cannot honour.

    Raises
    ------
    ConfigError
        Naming the argument, its value and what to do instead.
    """
    for name, value in given.items():
        if name == "process_set":
            if value is not None and value is not global_process_set:
                raise ConfigError(
                    f"{api}(process_set={value!r}): tfyarn.horovod has only the global "
                    "process set; leave process_set out"
                )
            continue
        accepted, hint = _ACCEPTED[name]
        if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
            raise ConfigError(f"{api}({name}={value!r}) is not supported: {hint}")


def unsupported_attribute(module: str, name: str, reasons: Mapping[str, str]) -> UnsupportedError:
    """The error for ``module.name``: why tfyarn lacks it, or that Horovod lacks it too."""
    if name in reasons:
        return UnsupportedError(f"{module}.{name} is not supported by tfyarn: {reasons[name]}")
    return UnsupportedError(f"module {module!r} has no attribute {name!r}")


# -- the per-process state ---------------------------------------------------------------


class _State:
    """The role ``init()`` found: at most one per process (one rank per process)."""

    def __init__(self) -> None:
        # set by tfyarn.horovod.spark.run's train_fn: a NodeContext, or any exchange
        # context (run_local's LocalContext)
        self.bound: Any = None
        self.ctx: Any = None
        self.strategy: ExchangeStrategy | None = None
        self.topology: Topology | None = None


_STATE = _State()


@contextlib.contextmanager
def bind_context(ctx: Any) -> Iterator[None]:
    """Make ``ctx`` the role ``init()`` finds while the block runs (``spark.run`` uses it)."""
    _STATE.bound = ctx
    try:
        yield
    finally:
        _STATE.bound = None
        shutdown()


def _find_context() -> Any:
    if _STATE.bound is not None:
        return _STATE.bound
    from tfyarn.node.context import current_context

    ctx = current_context()
    if ctx is None:
        raise ConfigError(f"hvd.init() found no tfyarn training role: {LAUNCH_HINT}")
    return ctx


def hosts_of(ctx: Any, members: Sequence[str]) -> list[str]:
    """The host of each training role, in rank order.

    A context without member records (``tfyarn.exchange.local.run_local``'s) runs every
    role on this machine.
    """
    records = getattr(ctx, "members", None)
    if not isinstance(records, Mapping):
        return ["localhost"] * len(members)
    return [records[task].host for task in members]


def init(comm: Any = None, process_sets: Any = None) -> None:
    """``hvd.init()``: attach to this process's tfyarn role (a no-op when attached).

    Raises
    ------
    ConfigError
        Outside a tfyarn role, under a strategy other than ``"allreduce"``, in a role
        that does not train, or with ``comm``/``process_sets``.
    """
    check_unsupported("hvd.init", comm=comm, process_sets=process_sets)
    if _STATE.strategy is not None:
        return
    ctx = _find_context()
    if ctx.strategy_name != "allreduce":
        raise ConfigError(
            f"hvd.init() needs a job run with strategy='allreduce', not "
            f"{ctx.strategy_name!r}: {LAUNCH_HINT}"
        )
    strategy = ctx.strategy()
    _STATE.ctx, _STATE.strategy = ctx, strategy
    _STATE.topology = topology(hosts_of(ctx, strategy.members), strategy.rank)


def is_initialized() -> bool:
    """Whether :func:`init` ran (and :func:`shutdown` did not since)."""
    return _STATE.strategy is not None


def shutdown() -> None:
    """Detach; the connections stay with the role, which closes them when it ends."""
    _STATE.ctx = _STATE.strategy = _STATE.topology = None


def require_state() -> tuple[ExchangeStrategy, Topology]:
    """The strategy and topology :func:`init` found.

    Raises
    ------
    ConfigError
        :func:`init` was not called.
    """
    if _STATE.strategy is None or _STATE.topology is None:
        raise ConfigError("Horovod has not been initialized: call hvd.init() first")
    return _STATE.strategy, _STATE.topology


def size() -> int:
    """Number of ranks (training roles)."""
    return require_state()[1].size


def rank() -> int:
    """This process's rank (worker index: ``tfyarn.horovod.spark.run`` runs no chief)."""
    return require_state()[1].rank


def local_rank() -> int:
    """Rank among the ranks on this host."""
    return require_state()[1].local_rank


def local_size() -> int:
    """Number of ranks on this host."""
    return require_state()[1].local_size


def cross_rank() -> int:
    """Rank among the ranks with this ``local_rank`` (the host's index when homogeneous)."""
    return require_state()[1].cross_rank


def cross_size() -> int:
    """Number of ranks with this ``local_rank`` (the number of hosts when homogeneous)."""
    return require_state()[1].cross_size


# -- collectives on NumPy arrays ---------------------------------------------------------

_MAX_DIMS = 8


def _as_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def allgather_array(coll: Collectives, a: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``a`` along the first axis, in rank order.

    The first dimensions may differ; the other dimensions and the dtype must agree.
    Built on the ring's sum: the shapes are summed first (each rank fills its own row),
    then each rank writes its bytes at its offset of a zeroed buffer and the buffers are
    summed as bytes, which is exact for every dtype (each byte is one rank's plus zeros).

    Raises
    ------
    ConfigError
        A 0-d array, more than 8 dimensions, or ranks that disagree on dtype or on the
        dimensions after the first.
    """
    a = np.asarray(a)
    if a.ndim == 0 or a.ndim > _MAX_DIMS:
        raise ConfigError(f"allgather takes arrays of 1 to {_MAX_DIMS} dimensions, got {a.ndim}")
    n, me = coll.size, coll.rank
    meta = np.zeros((n, _MAX_DIMS + 2), np.int64)
    meta[me, : 2 + a.ndim] = [a.dtype.num, a.ndim, *a.shape]
    if n > 1:
        coll.allreduce_(meta.reshape(-1))
    if any((meta[r, :2] != meta[me, :2]).any() or (meta[r, 3:] != meta[me, 3:]).any()
           for r in range(n)):  # fmt: skip
        shapes = [tuple(int(d) for d in row[2 : 2 + int(row[1])]) for row in meta]
        raise ConfigError(
            f"allgather: ranks must agree on dtype and on every dimension but the first; "
            f"got shapes {shapes} (by rank) and dtype {a.dtype} here"
        )
    firsts = meta[:, 2]
    out = np.zeros((int(firsts.sum()), *a.shape[1:]), a.dtype)
    if n == 1 or out.size == 0:
        return np.array(a, copy=True)
    start = int(firsts[:me].sum())
    out[start : start + a.shape[0]] = a
    coll.allreduce_(_as_bytes(out))
    return out


def reduce_array(
    coll: Collectives,
    a: np.ndarray,
    op: ReduceOp,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> np.ndarray:
    """``a`` reduced over every rank with ``op`` (a new array, same shape and dtype).

    Average and Sum run on the ring; Min, Max and Product from an all-gather. Integers
    average by floor division. Scale factors apply to floating-point values only.

    Raises
    ------
    ConfigError
        Adasum, a non-numeric dtype, or scale factors on integers.
    """
    a = np.array(a, copy=True)
    if a.dtype.kind not in "fiub":
        raise ConfigError(f"allreduce needs a numeric array, got dtype {a.dtype}")
    scaled = prescale_factor != 1.0 or postscale_factor != 1.0
    if scaled and a.dtype.kind != "f":
        raise ConfigError(
            f"prescale_factor/postscale_factor need a floating-point tensor, got {a.dtype}"
        )
    if prescale_factor != 1.0:
        a *= a.dtype.type(prescale_factor)
    if op in _GATHERED_OPS:
        stacked = allgather_array(coll, a.reshape(1, *a.shape))
        out = np.asarray(_GATHERED_OPS[op](stacked, axis=0)).astype(a.dtype)
    elif op in (ReduceOp.AVERAGE, ReduceOp.SUM):
        if a.dtype.kind == "b":
            raise ConfigError("allreduce: Average/Sum of booleans; use hvd.Max or hvd.Min")
        # integers are summed exactly in int64 (the ring adds int32/int64 in place)
        work = a.astype(np.int64) if a.dtype.kind in "iu" else a
        flat = np.ascontiguousarray(work.reshape(-1))
        average = op is ReduceOp.AVERAGE
        if coll.size > 1:
            coll.allreduce_(flat, average=average and flat.dtype.kind == "f")
        if average and flat.dtype.kind != "f":
            flat //= coll.size
        out = flat.reshape(a.shape).astype(a.dtype, copy=False)
    else:
        resolve_op(op)  # raises for Adasum
        raise ConfigError(f"allreduce cannot reduce with {op!r}")
    if postscale_factor != 1.0:
        out = out * out.dtype.type(postscale_factor)
    return out


def split_sizes(first_dim: int, ranks: int) -> list[int]:
    """How ``reducescatter`` splits the first axis: the first ``first_dim % ranks`` ranks
    get one row more than the others."""
    base, extra = divmod(first_dim, ranks)
    return [base + (1 if r < extra else 0) for r in range(ranks)]


def reducescatter_array(
    coll: Collectives,
    a: np.ndarray,
    op: ReduceOp,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> np.ndarray:
    """``a`` reduced over every rank, then this rank's slice of the first axis.

    Computed as a full reduction (the ring's cost; a reduce-scatter proper would move
    half the bytes), then sliced as :func:`split_sizes` says.
    """
    a = np.asarray(a)
    if a.ndim == 0:
        raise ConfigError("reducescatter takes arrays of at least 1 dimension, got a scalar")
    if op not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ConfigError(f"reducescatter reduces with hvd.Average or hvd.Sum, not {op!r}")
    reduced = reduce_array(coll, a, op, prescale_factor, postscale_factor)
    sizes = split_sizes(a.shape[0], coll.size)
    start = sum(sizes[: coll.rank])
    return np.array(reduced[start : start + sizes[coll.rank]], copy=True)


def broadcast_array(coll: Collectives, a: np.ndarray, root: int) -> np.ndarray:
    """Rank ``root``'s ``a`` on every rank (same shape and dtype everywhere); a new array."""
    if not 0 <= root < coll.size:
        raise ConfigError(f"root_rank={root} is not a rank (there are {coll.size})")
    a = np.array(a, copy=True)
    if coll.size > 1 and a.size:
        coll.broadcast_(_as_bytes(a), root)
    return a


def broadcast_object_on(coll: Collectives, obj: Any, root: int = 0) -> Any:
    """Rank ``root``'s ``obj`` on every rank (pickled with cloudpickle; its length first)."""
    if not 0 <= root < coll.size:
        raise ConfigError(f"root_rank={root} is not a rank (there are {coll.size})")
    if coll.size == 1:
        return obj
    data = cloudpickle.dumps(obj) if coll.rank == root else b""
    length = np.array([len(data)], np.int64)
    coll.broadcast_(length, root)
    buf = np.zeros(int(length[0]), np.uint8)
    if coll.rank == root:
        buf[:] = np.frombuffer(data, np.uint8)
    if buf.size:
        coll.broadcast_(buf, root)
    return obj if coll.rank == root else pickle.loads(buf.tobytes())


def allgather_object_on(coll: Collectives, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled with cloudpickle)."""
    data = np.frombuffer(cloudpickle.dumps(obj), np.uint8)
    sizes = np.zeros(coll.size, np.int64)
    sizes[coll.rank] = data.size
    if coll.size > 1:
        coll.allreduce_(sizes)
    gathered = allgather_array(coll, data)
    ends = np.cumsum(sizes)
    return [
        pickle.loads(gathered[end - n : end].tobytes())
        for n, end in zip(sizes.tolist(), ends.tolist(), strict=True)
    ]


def join_on(coll: Collectives) -> int:
    """Wait for every rank; return the rank that arrived last (by its host's clock).

    tfyarn gives every rank the same number of steps, so no rank waits in ``join`` while
    others still reduce: it is a barrier that says who was last.
    """
    arrival = np.zeros(coll.size, np.float64)
    arrival[coll.rank] = time.time()
    if coll.size > 1:
        coll.allreduce_(arrival)
    return int(np.argmax(arrival))


# -- the same collectives as TensorFlow ops -----------------------------------------------


def _numpy_op(fn: Callable[[np.ndarray], np.ndarray], tensor: Any, shape: Any, name: str) -> Any:
    """``fn`` on ``tensor``'s value as one TensorFlow op (eager or inside ``tf.function``)."""
    import tensorflow as tf

    t = tf.convert_to_tensor(tensor)  # IndexedSlices become dense here
    out = tf.numpy_function(lambda v: np.asarray(fn(v)), [t], t.dtype, stateful=True, name=name)
    out.set_shape(shape if shape is not None else t.shape)
    return out


def _op_name(name: str | None, default: str) -> str:
    return default if name is None else "".join(c if c.isalnum() else "_" for c in name)


def allreduce(
    tensor: Any,
    average: bool | None = None,
    device_dense: str = "",
    device_sparse: str = "",
    compression: type[Compressor] | Compressor = NoneCompressor,
    op: Any = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
) -> Any:
    """``hvd.allreduce``: ``tensor`` reduced over every rank, as a tensor of its shape.

    ``name`` and ``ignore_name_scope`` only name the op.
    """
    check_unsupported(
        "hvd.allreduce", device_dense=device_dense, device_sparse=device_sparse,
        process_set=process_set,
    )  # fmt: skip
    reduce_op = resolve_op(op, average)
    strategy, _ = require_state()
    coll = strategy.collectives
    compressed, ctx = compression.compress(_to_tensor(tensor))
    out = _numpy_op(
        lambda v: reduce_array(coll, v, reduce_op, prescale_factor, postscale_factor),
        compressed, None, _op_name(name, "hvd_allreduce"),
    )  # fmt: skip
    return compression.decompress(out, ctx)


def _to_tensor(value: Any) -> Any:
    import tensorflow as tf

    return tf.convert_to_tensor(value)


def allgather(
    tensor: Any,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """``hvd.allgather``: every rank's ``tensor`` concatenated along the first axis."""
    check_unsupported("hvd.allgather", process_set=process_set)
    strategy, _ = require_state()
    coll = strategy.collectives
    t = _to_tensor(tensor)
    shape = [None, *t.shape[1:]] if t.shape.rank else None
    return _numpy_op(lambda v: allgather_array(coll, v), t, shape, _op_name(name, "hvd_allgather"))


def broadcast(
    tensor: Any,
    root_rank: int,
    name: str | None = None,
    ignore_name_scope: bool = False,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """``hvd.broadcast``: rank ``root_rank``'s ``tensor`` on every rank."""
    check_unsupported("hvd.broadcast", process_set=process_set)
    strategy, _ = require_state()
    coll = strategy.collectives
    return _numpy_op(
        lambda v: broadcast_array(coll, v, root_rank), tensor, None, _op_name(name, "hvd_broadcast")
    )


def reducescatter(
    tensor: Any,
    device_dense: str = "",
    compression: type[Compressor] | Compressor = NoneCompressor,
    op: Any = ReduceOp.AVERAGE,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
    ignore_name_scope: bool = False,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Any:
    """``hvd.reducescatter``: reduced over every rank, this rank's part of the first axis."""
    check_unsupported("hvd.reducescatter", device_dense=device_dense, process_set=process_set)
    reduce_op = resolve_op(op)
    strategy, _ = require_state()
    coll = strategy.collectives
    compressed, ctx = compression.compress(_to_tensor(tensor))
    shape = [None, *compressed.shape[1:]] if compressed.shape.rank else None
    out = _numpy_op(
        lambda v: reducescatter_array(coll, v, reduce_op, prescale_factor, postscale_factor),
        compressed, shape, _op_name(name, "hvd_reducescatter"),
    )  # fmt: skip
    return compression.decompress(out, ctx)


def broadcast_variables(
    variables: Sequence[Any], root_rank: int = 0, process_set: ProcessSet = global_process_set
) -> Any:
    """``hvd.broadcast_variables``: rank ``root_rank``'s values in every rank's variables.

    Eagerly it assigns at once (one fused broadcast per dtype) and returns None; inside a
    ``tf.function`` (Horovod's "broadcast after the first step" idiom) it returns the
    group of assign ops, the broadcast itself one ``tf.numpy_function``.
    """
    check_unsupported("hvd.broadcast_variables", process_set=process_set)
    strategy, _ = require_state()
    if not 0 <= root_rank < strategy.size:
        raise ConfigError(f"root_rank={root_rank} is not a rank (there are {strategy.size})")
    import tensorflow as tf

    variables = list(variables)
    if tf.executing_eagerly() or not variables:
        strategy.broadcast_variables(variables, root_rank)
        return None
    from tfyarn.exchange.collectives import fused

    coll = strategy.collectives

    def call(*arrays: np.ndarray) -> list[np.ndarray]:
        return fused(arrays, lambda flat: coll.broadcast_(flat, root_rank))

    values = [tf.convert_to_tensor(v) for v in variables]
    out = tf.numpy_function(
        call, values, [v.dtype for v in values], stateful=True, name="hvd_broadcast_variables"
    )
    assigns = []
    for v, o, t in zip(variables, out, values, strict=True):
        o.set_shape(t.shape)  # numpy_function's outputs have no static shape
        assigns.append(v.assign(o))
    return tf.group(*assigns)


def broadcast_object(
    obj: Any, root_rank: int = 0, session: Any = None, name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> Any:  # fmt: skip
    """``hvd.broadcast_object``: rank ``root_rank``'s ``obj`` on every rank."""
    check_unsupported("hvd.broadcast_object", session=session, process_set=process_set)
    strategy, _ = require_state()
    return broadcast_object_on(strategy.collectives, obj, root_rank)


def allgather_object(
    obj: Any, session: Any = None, name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:  # fmt: skip
    """``hvd.allgather_object``: every rank's ``obj``, in rank order."""
    check_unsupported("hvd.allgather_object", session=session, process_set=process_set)
    strategy, _ = require_state()
    return allgather_object_on(strategy.collectives, obj)


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """``hvd.barrier``: return once every rank has called it."""
    check_unsupported("hvd.barrier", process_set=process_set)
    strategy, _ = require_state()
    strategy.barrier()


def join(device: str = "") -> int:
    """``hvd.join``: a barrier; returns the rank that arrived last (see :func:`join_on`)."""
    check_unsupported("hvd.join", device=device)
    strategy, _ = require_state()
    return join_on(strategy.collectives)


# -- gradients ---------------------------------------------------------------------------


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
