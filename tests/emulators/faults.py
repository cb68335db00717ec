"""Transport faults on 127.0.0.1: a TCP server that resets every connection.

`ResetServer` accepts each connection, reads whatever the client sends
(so the request has left the client: its fate is unknown to the sender), then
closes with SO_LINGER 0, which sends a TCP RST instead of a FIN.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any


class ResetServer:
    def __init__(self, read_first: bool = True) -> None:
        self.read_first = read_first
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.read_first:
                    conn.settimeout(1.0)
                    try:
                        conn.recv(65536)
                    except OSError:
                        pass
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def start(self) -> ResetServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> ResetServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
