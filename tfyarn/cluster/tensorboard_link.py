"""The driver's link to the job's TensorBoard, known before any role starts.

TensorBoard runs on the chief's host (:mod:`tfyarn.node.tensorboard`), on a port chosen
when it starts, and on another host after a restart moves the chief. The driver serves
one address for the whole run that redirects to wherever TensorBoard is now (the path
kept), so the URL printed at the start, put in the Spark UI's job description and
returned in ``RunResult.tensorboard_url`` stays valid across attempts. Until TensorBoard
serves, it answers 503 with a ``Retry-After``.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["TensorBoardLink", "job_description"]


def job_description(job_id: str, tensorboard_url: str | None) -> str:
    """The Spark UI's description of the job's stage (a TensorBoard link when there is one).

    Spark renders ``<a href>`` in job descriptions (``UIUtils.makeDescription``).
    """
    text = f"tfyarn job {job_id}"
    if tensorboard_url:
        text += f' (<a href="{html.escape(tensorboard_url)}">TensorBoard</a>)'
    return text


class TensorBoardLink:
    """``http://host:port/`` redirecting to the chief's TensorBoard.

    Parameters
    ----------
    host : str
        The address to bind (the driver's).
    target : callable
        TensorBoard's current URL, or None while it does not serve.
    """

    def __init__(self, host: str, target: Callable[[], str | None]) -> None:
        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                where = target()
                if where is None:
                    body = b"TensorBoard is starting on the chief's host; retry in a few seconds\n"
                    self.send_response(503)
                    self.send_header("Retry-After", "5")
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(302)
                self.send_header("Location", where.rstrip("/") + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return  # not into the driver's terminal

        self._server = ThreadingHTTPServer((host, 0), Redirect)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_port}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tfyarn-tensorboard-link", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving; idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
