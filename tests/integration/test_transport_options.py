"""``tfyarn.run(transport_options=...)`` reaches the roles' listeners and mesh connections.

The options travel driver -> job spec -> role process -> the listener the role opens
(merged with the transport selection) -> the exchange mesh's connects. Observable on the
role side: an ``op_timeout`` ends a receive nobody answers, on the accepting comm (the
listener's options) and on the connecting one (the mesh's), after that many seconds and
with an error that names the option.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import cloudpickle
import pytest

import tfyarn
from tfyarn.transport import Keepalive, TransportOptions

OP_TIMEOUT = 1.5
# the roles do not have this test module: ship _probe by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _probe(ctx: Any) -> dict[str, dict[str, Any]] | None:
    """Wait in recv on a mesh comm nobody writes to; worker:0 returns both roles' facts."""
    import json

    from tfyarn.errors import TransportError
    from tfyarn.exchange.mesh import Mesh

    mesh = Mesh(ctx.task_id, ctx.listener, ctx.peers, ctx.secret, timeout=60)
    try:
        # Each role reads from one comm whose other end stays silent (and open): worker:0
        # from the one it connected (the mesh's options), worker:1 from the one it
        # accepted (the listener's options).
        if ctx.task_id == "worker:0":
            comm = mesh.connect("worker:1", "a")
            silent = mesh.connect("worker:1", "b")
        else:
            silent = mesh.accept("worker:0", "a")
            comm = mesh.accept("worker:0", "b")
        t0 = time.monotonic()
        try:
            comm.recv()  # neither side sends: only op_timeout can end this
            error = "received"
        except TransportError as exc:
            error = str(exc)
        time.sleep(3 * OP_TIMEOUT)  # keep ours open until the peer's recv timed out too
        silent.close()
        facts = {
            "waited": time.monotonic() - t0,
            "error": error,
            "comm_op_timeout": comm.op_timeout,
            "listener_op_timeout": ctx.listener.options.op_timeout,
            "keepalive_idle": ctx.listener.options.keepalive.idle_s,
            "transport": comm.transport,
        }
        if ctx.task_id == "worker:1":
            with mesh.connect("worker:0", "facts") as out:
                out.send(json.dumps(facts).encode())
                # Close only once worker:0 has the facts: a gRPC comm closed right after
                # a send cancels its call, which can drop what gRPC had not sent yet.
                out.recv()
            return None
        with mesh.accept("worker:1", "facts") as back:
            theirs = json.loads(bytes(back.recv()))
            back.send(b"ok")
        return {"worker:0": facts, "worker:1": theirs}
    finally:
        mesh.close()


@pytest.mark.parametrize("scheme", ["tcp", "grpc"])
def test_run_options_reach_listener_and_mesh(spark: Any, scheme: str) -> None:
    options = TransportOptions(op_timeout=OP_TIMEOUT, keepalive=Keepalive(7, 3, 2))
    result = tfyarn.run(
        spark,
        _probe,
        workers=2,
        chief=False,
        transport=scheme,
        transport_options=options,
        progress=False,
        timeout=300,
    )
    for task in ("worker:0", "worker:1"):  # worker:0 connected, worker:1 accepted
        m = result.value[task]
        assert m["transport"] == scheme
        assert m["listener_op_timeout"] == OP_TIMEOUT
        assert m["comm_op_timeout"] == OP_TIMEOUT
        assert m["keepalive_idle"] == 7
        assert (
            f"no progress within op_timeout={OP_TIMEOUT} s (TransportOptions.op_timeout)"
            in (m["error"])
        ), m["error"]
        assert OP_TIMEOUT * 0.9 <= m["waited"] < OP_TIMEOUT + 10, m
