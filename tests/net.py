"""Network helpers for tests that start local servers or inject network faults."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from fedmarket.processes import free_port

__all__ = ["Forward", "Intercept", "RpcProxy", "free_port"]


Forward = Callable[[], requests.Response]
Intercept = Callable[[bytes, Forward], requests.Response | None]


class RpcProxy:
    """An HTTP JSON-RPC proxy in front of ``upstream`` for fault injection.

    ``intercept(body, forward)`` sees each request body; it returns the answer to send (usually
    ``forward()``, possibly late) or None to drop the connection without an answer.
    """

    def __init__(self, upstream: str, intercept: Intercept) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))

                def forward() -> requests.Response:
                    return requests.post(
                        upstream,
                        data=body,
                        headers={"Content-Type": "application/json"},
                        timeout=30,
                    )

                answer = intercept(body, forward)
                if answer is None:
                    self.connection.shutdown(2)
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
