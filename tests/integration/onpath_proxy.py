"""An on-path attacker, as its own process: relays one TCP connection and tampers with it.

Usage: ``python onpath_proxy.py UPSTREAM_PORT MODE``; prints its own port, then relays
one client connection to ``127.0.0.1:UPSTREAM_PORT`` both ways. MODE says what it does
to the client's bytes (offsets count from the start of the client's stream):

* ``relay``: nothing (the control case);
* ``flip:N``: changes one bit of byte N on the way;
* ``replay:START:END``: once it has relayed byte END-1, sends bytes START..END-1 again;
* ``inject:START:END``: sends bytes START..END-1 again *in place of* what follows, i.e.
  it drops the next (END - START) bytes and puts the recorded ones there.

It reads nothing it could not read on a real network: it never has the job secret. It
ends when either side closes, and after 60 s whatever happens.
"""

from __future__ import annotations

import select
import socket
import sys
import time

_DEADLINE_S = 60.0


def main(argv: list[str]) -> int:
    upstream_port, mode = int(argv[1]), argv[2]
    kind, *numbers = mode.split(":")
    args = [int(n) for n in numbers]
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    server.settimeout(_DEADLINE_S)
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
    seen = bytearray()  # every byte the client sent, as relayed so far
    skip = 0  # bytes of the client's to drop (inject)
    done = False
    end = time.monotonic() + _DEADLINE_S
    while time.monotonic() < end:
        ready, _, _ = select.select([client, upstream], [], [], 1.0)
        for sock in ready:
            data = sock.recv(1 << 16)
            if not data:
                return 0
            if sock is upstream:
                client.sendall(data)
                continue
            chunk = bytearray(data)
            start = len(seen)
            seen += chunk
            if kind == "flip" and start <= args[0] < len(seen):
                chunk[args[0] - start] ^= 0x01
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            upstream.sendall(chunk)
            if kind in ("replay", "inject") and not done and len(seen) >= args[1]:
                done = True
                upstream.sendall(bytes(seen[args[0] : args[1]]))
                if kind == "inject":
                    skip = args[1] - args[0]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
