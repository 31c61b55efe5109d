"""A real loopback HTTP server speaking OpenAI chat/completions and /v1/models, for tests.

    with ChatServer(answer=lambda request: "[[1, 2], [3, 4]]") as server:
        client = VLMClient(ClientConfig(url=server.url, ...))

Scripted behaviours (all optional, combinable):

* ``answer(request_json) -> str | Reply``: the message content (200), or a full ``Reply``;
* ``delay``: seconds to wait before answering (a float, or a callable(request_number));
* ``fail_first=N`` with ``fail_status`` (500, 429, ...) and ``retry_after`` (header value):
  the first N chat requests get that status;
* ``close_first=N``: the first N chat requests get their connection closed, no answer;
* ``models``: ids listed by GET /v1/models;
* ``drip``: seconds between the answer's body bytes (headers go out at once).
* ``drip_headers``: seconds between the bytes of the status line and headers.

Records (thread-safe): ``requests`` (chat requests), ``model_requests``, ``per_image``
(Counter keyed by the sha256 of the decoded image bytes), ``headers`` (one dict per chat
request, in arrival order), ``bodies``, ``max_concurrent`` (most chat requests handled at
once).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """A full scripted HTTP answer."""

    status: int = 200
    body: str | bytes | dict = ""
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str, model: str = "test-vlm") -> dict:
    """An OpenAI-style chat completion body carrying `content`."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def prompt_of(request: dict) -> str:
    """The text part of the first user message."""
    parts = request["messages"][0]["content"]
    return next(p["text"] for p in parts if p.get("type") == "text")


def image_of(request: dict) -> bytes:
    """The decoded image bytes of the first user message."""
    parts = request["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p.get("type") == "image_url")
    return base64.b64decode(url.split(",", 1)[1])


def image_sha(request: dict) -> str:
    return hashlib.sha256(image_of(request)).hexdigest()


class ChatServer:
    def __init__(
        self,
        answer: Callable[[dict], str | Reply] | None = None,
        *,
        delay: float | Callable[[int], float] = 0.0,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: str | None = None,
        close_first: int = 0,
        models: tuple[str, ...] = ("test-vlm",),
        drip: float = 0.0,
        drip_headers: float = 0.0,
    ):
        self.answer = answer or (lambda request: "[[1, 1], [1, 1]]")
        self.delay = delay
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.close_first = close_first
        self.models = models
        self.drip = drip
        self.drip_headers = drip_headers
        self.lock = threading.Lock()
        self.requests = 0
        self.model_requests = 0
        self.per_image: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> ChatServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    # ------------------------------------------------------------ behaviour

    def _register(self, body: dict, headers: dict[str, str]) -> int:
        with self.lock:
            self.requests += 1
            self.headers.append(headers)
            self.bodies.append(body)
            with contextlib.suppress(KeyError, StopIteration, ValueError, IndexError, TypeError):
                self.per_image[image_sha(body)] += 1  # requests without an image are not counted
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            return self.requests

    def _release(self) -> None:
        with self.lock:
            self.concurrent -= 1

    def _wait(self, number: int) -> None:
        delay = self.delay(number) if callable(self.delay) else self.delay
        if delay:
            time.sleep(delay)

    def respond(self, number: int, body: dict) -> Reply | None:
        """The reply to chat request `number` (1-based); None means close the connection."""
        if number <= self.close_first:
            return None
        if number <= self.close_first + self.fail_first:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return Reply(self.fail_status, {"error": "scripted failure"}, headers)
        result = self.answer(body)
        if isinstance(result, Reply):
            return result
        return Reply(200, completion(result, body.get("model", "test-vlm")))


def _make_handler(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, reply: Reply) -> None:
            body = reply.body
            if isinstance(body, dict):
                body = json.dumps(body)
            data = body.encode() if isinstance(body, str) else body
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
            headers.update(reply.headers)
            if server.drip_headers:
                lines = [f"HTTP/1.1 {reply.status} {self.responses[reply.status][0]}"]
                lines += [f"{key}: {value}" for key, value in headers.items()]
                self._drip(("\r\n".join(lines) + "\r\n\r\n").encode(), server.drip_headers)
            else:
                self.send_response(reply.status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
            if server.drip:
                self._drip(data, server.drip)
            else:
                self.wfile.write(data)

        def _drip(self, data: bytes, seconds: float) -> None:
            """One byte at a time, each well within a read timeout."""
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(seconds)

        def do_GET(self):
            if self.path.rstrip("/") != "/v1/models":
                self._send(Reply(404, {"error": f"no route {self.path}"}))
                return
            with server.lock:
                server.model_requests += 1
            data = [{"id": name, "object": "model"} for name in server.models]
            self._send(Reply(200, {"object": "list", "data": data}))

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(Reply(404, {"error": f"no route {self.path}"}))
                return
            body = json.loads(raw)
            number = server._register(body, dict(self.headers.items()))
            try:
                server._wait(number)
                reply = server.respond(number, body)
                if reply is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (read timeout): nothing to answer
            finally:
                server._release()

    return Handler
