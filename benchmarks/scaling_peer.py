"""One trainer of ``tfyarn bench scaling``, run inside its host's network namespace.

Usage (by :mod:`benchmarks.scaling_bench`, never by hand)::

    ip netns exec NS python -m benchmarks.scaling_peer

Everything comes on stdin, one JSON object a line; the answers go to stdout, one line
each, starting with a word (anything else a library prints goes to stderr):

1. ``{"rank": r, "size": n, "address": ip, "secret": hex, "keys": [...], "mwms": bool,
   "tf_config": {...}, "batch": b, "seed": s}``: the trainer opens one tcp listener on
   ``address`` per key (``SYSTEM@MODEL``: a fresh exchange per system and model), prints
   ``ADDRESS {key: url}``, sets ``TF_CONFIG`` and, with ``mwms``, creates TensorFlow's
   ``MultiWorkerMirroredStrategy`` (before any other TensorFlow op, as it must be); then
   it reads ``{"peers": {key: {task: url}}}`` and prints ``READY``.
2. ``{"op": "measure", "model": m, "system": s, "warmup": w, "steps": k}``: build (once
   per model and system) and run ``w`` training steps of ``m`` under ``s`` (``compute``:
   plain local ``apply_gradients``; ``tfyarn...``: the exchange strategy's distributed
   optimizer; ``mwms``: ``strategy.run`` in MWMS's scope), print ``WARM``, wait for
   ``{"op": "go"}`` (sent once every trainer is warm), time ``k`` steps; prints
   ``RESULT {"times": [...], "checksum": c, "params": p}``, the checksum being the
   float64 sum of the trainable weights after the steps (equal on every rank when
   gradients were exchanged).
3. ``{"op": "drop", "model": m}``: free what ``m`` holds (and close its exchanges);
   prints ``RESULT {}``.
4. ``{"op": "stop"}``, or the end of stdin: exit 0.

A failure prints ``ERROR <json traceback>`` and exits 1.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from benchmarks.scaling_bench import (
    COMPUTE,
    EXCHANGE_OPTIONS,
    MODELS,
    MWMS,
    ModelSpec,
    exchange_key,
)

#: Batches of synthetic data each trainer cycles through.
DATA_BATCHES = 4
#: The optimizer of every system.
LEARNING_RATE, MOMENTUM = 0.01, 0.9


@dataclass
class Trainer:
    """One model under one system, ready to step."""

    model: Any
    step: Callable[[Any, Any], float]
    data: tuple[Any, Any]
    params: int
    closers: list[Callable[[], None]] = field(default_factory=list)


def build_model(spec: ModelSpec) -> Any:
    """The Keras model of ``spec`` (weights from Keras's seeded initialisers)."""
    import keras

    layers: list[Any] = [keras.Input((spec.inputs,))]
    for _ in range(spec.depth):
        layers.append(keras.layers.Dense(spec.width, activation="relu"))
        if spec.batch_norm:
            layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(spec.classes))
    return keras.Sequential(layers, name=spec.name)


def synthetic_data(spec: ModelSpec, batch: int, rank: int, seed: int) -> tuple[Any, Any]:
    """``DATA_BATCHES`` batches of features and labels, different on every rank."""
    import tensorflow as tf

    rng = np.random.default_rng([seed, rank])
    x = rng.standard_normal((DATA_BATCHES, batch, spec.inputs)).astype(np.float32)
    y = rng.integers(0, spec.classes, (DATA_BATCHES, batch)).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def _step_fn(model: Any, optimizer: Any, scale: float = 1.0) -> Callable[[Any, Any], Any]:
    """One compiled training step: loss, gradients, ``optimizer.apply_gradients``."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) * scale
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def _sgd() -> Any:
    import keras

    return keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)


def warm_up(trainer: Trainer, warmup: int) -> None:
    """``warmup`` untimed steps (the first traces the step function)."""
    xs, ys = trainer.data
    for i in range(warmup):
        trainer.step(xs[i % DATA_BATCHES], ys[i % DATA_BATCHES])


def time_steps(trainer: Trainer, warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` steps that follow ``warmup`` steps."""
    xs, ys = trainer.data
    times = []
    for i in range(steps):
        k = (warmup + i) % DATA_BATCHES
        start = time.perf_counter()
        trainer.step(xs[k], ys[k])  # returns a float: the step has finished
        times.append(time.perf_counter() - start)
    return times


def checksum(model: Any) -> float:
    """The float64 sum of every trainable weight."""
    return float(sum(np.sum(np.asarray(v), dtype=np.float64) for v in model.trainable_variables))


class Peer:
    """One trainer: its exchanges, its MWMS, the command loop and the trainer cache.

    Parameters
    ----------
    init : dict
        The first stdin line (see the module docstring).
    out : file
        Where the answers go (the real stdout).
    commands : file
        The commands (stdin); the peers' addresses are read from it here.
    """

    def __init__(self, init: dict[str, Any], out: IO[str], commands: IO[str]) -> None:
        from tfyarn.transport import listen

        self.init = init
        self.out = out
        self.rank: int = init["rank"]
        self.trainers: dict[tuple[str, str], Trainer] = {}
        self.secret = bytes.fromhex(init["secret"])
        self.listeners = {
            key: listen(f"tcp://{init['address']}:0", secret=self.secret) for key in init["keys"]
        }
        self.say("ADDRESS", {key: lst.address for key, lst in self.listeners.items()})
        os.environ["TF_CONFIG"] = json.dumps(init["tf_config"])
        import tensorflow as tf

        self.mirrored: Any = None
        if init["mwms"]:
            # its default collective implementation (AUTO: ring on CPU), made before any
            # other TensorFlow op as it must be; the other systems run outside its scope
            self.mirrored = tf.distribute.MultiWorkerMirroredStrategy()
        self.peers: dict[str, dict[str, str]] = json.loads(commands.readline())["peers"]

    def say(self, word: str, payload: Any = None) -> None:
        """One answer line on the real stdout."""
        self.out.write(word if payload is None else f"{word} {json.dumps(payload)}")
        self.out.write("\n")
        self.out.flush()

    def build(self, spec: ModelSpec, system: str) -> Trainer:
        """A trainer of ``spec`` under ``system``: ``compute`` (no exchange), ``mwms``, or
        an ``ExchangeStrategy`` with the system's options."""
        import keras
        import tensorflow as tf

        from tfyarn.exchange.local import LocalContext

        keras.utils.set_random_seed(self.init["seed"])
        data = synthetic_data(spec, self.init["batch"], self.rank, self.init["seed"])
        if system == MWMS:
            return self._mirrored(spec, data)
        model = build_model(spec)
        params = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        if system == COMPUTE:
            optimizer = _sgd()
            optimizer.build(model.trainable_variables)
            compiled = tf.function(_step_fn(model, optimizer))
            return Trainer(model, lambda x, y: float(compiled(x, y)), data, params)
        key = exchange_key(system, spec.name)
        ctx = LocalContext(
            "worker",
            self.rank,
            self.secret,
            "tcp",
            self.listeners[key],
            self.peers[key],
            "allreduce",
            dict(EXCHANGE_OPTIONS[system]),
        )
        strategy = ctx.strategy()
        optimizer = strategy.distributed_optimizer(_sgd())
        optimizer.build(model.trainable_variables)
        compiled = tf.function(_step_fn(model, optimizer))
        strategy.begin(model, optimizer)
        closers = [ctx.close, self.listeners[key].close]
        return Trainer(model, lambda x, y: float(compiled(x, y)), data, params, closers)

    def _mirrored(self, spec: ModelSpec, data: tuple[Any, Any]) -> Trainer:
        """A model and optimizer made in MWMS's scope; ``strategy.run`` per step.

        Keras 3's optimizer sums the gradients over the replicas (an all-reduce in
        ``apply_gradients``), so the loss is divided by their number.
        """
        import tensorflow as tf

        strategy = self.mirrored
        if strategy is None:
            raise ValueError("mwms was not asked for at the start")
        with strategy.scope():
            model = build_model(spec)
            optimizer = _sgd()
            optimizer.build(model.trainable_variables)
        params = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        replica = _step_fn(model, optimizer, 1.0 / strategy.num_replicas_in_sync)

        @tf.function
        def compiled(x: Any, y: Any) -> Any:
            return strategy.run(replica, args=(x, y))

        def step(x: Any, y: Any) -> float:
            return float(strategy.experimental_local_results(compiled(x, y))[0])

        return Trainer(model, step, data, params)

    def measure(
        self, model: str, system: str, warmup: int, steps: int, commands: IO[str]
    ) -> dict[str, Any]:
        """Time the steps of ``model`` under ``system`` (built on first use).

        After the warm-up it says ``WARM`` and waits for ``{"op": "go"}``: every trainer
        starts its timed steps together, also those that do not exchange (``compute``),
        so that they share the CPU throughout as the exchanging trainers do.
        """
        key = (model, system)
        if key not in self.trainers:
            self.trainers[key] = self.build(MODELS[model], system)
        trainer = self.trainers[key]
        warm_up(trainer, warmup)
        self.say("WARM")
        go = json.loads(commands.readline() or "{}")
        if go.get("op") != "go":
            raise ValueError(f"expected go after WARM, got {go!r}")
        times = time_steps(trainer, warmup, steps)
        return {"times": times, "checksum": checksum(trainer.model), "params": trainer.params}

    def drop(self, model: str) -> None:
        """Close and forget every trainer of ``model``."""
        for key in [k for k in self.trainers if k[0] == model]:
            for close in self.trainers.pop(key).closers:
                with contextlib.suppress(Exception):
                    close()
        gc.collect()

    def serve(self, commands: IO[str]) -> None:
        """Answer commands until ``stop`` or the end of ``commands``."""
        while line := commands.readline():
            cmd = json.loads(line)
            if cmd["op"] == "stop":
                break
            if cmd["op"] == "measure":
                args = (cmd["model"], cmd["system"], cmd["warmup"], cmd["steps"])
                self.say("RESULT", self.measure(*args, commands))
            elif cmd["op"] == "drop":
                self.drop(cmd["model"])
                self.say("RESULT", {})
            else:
                raise ValueError(f"unknown command {cmd!r}")

    def close(self) -> None:
        """Close every trainer's exchange, then every listener."""
        for model in {k[0] for k in self.trainers}:
            self.drop(model)
        for lst in self.listeners.values():
            with contextlib.suppress(Exception):
                lst.close()


def main() -> int:
    """Run one trainer (see the module docstring)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    commands = sys.stdin
    peer: Peer | None = None
    try:
        peer = Peer(json.loads(commands.readline()), out, commands)
        peer.say("READY")
        peer.serve(commands)
        peer.close()
    except BaseException:
        out.write("ERROR " + json.dumps(traceback.format_exc()) + "\n")
        out.flush()
        sys.stderr.flush()
        os._exit(1)
    out.flush()
    sys.stderr.flush()
    os._exit(0)  # MultiWorkerMirroredStrategy's server threads can hold up a normal exit


if __name__ == "__main__":
    sys.exit(main())
