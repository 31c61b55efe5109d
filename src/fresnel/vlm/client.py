"""Client for an OpenAI-compatible chat/completions server with image input (LM Studio by default).

* One image + one text prompt per request; the image travels as a base64 data URL.
* Timeouts: a connect timeout, and a read timeout that is the total time an answer may take
  once connected (status line, headers and body together), not the gap between two socket
  reads: a server that drips one byte a second still fails after ``read_timeout`` seconds.
* Retries: up to ``retries`` more attempts for timeouts, connection errors, HTTP 429 and 5xx,
  waiting ``backoff * 2**attempt`` (capped at ``backoff_max``) plus up to ``jitter`` of that
  at random; a ``Retry-After`` header (seconds or HTTP date) makes the wait at least that long
  (capped at ``retry_after_max``). Other 4xx answers and malformed bodies are not retried.
* In-flight limit: every HTTP request holds one slot of a semaphore of ``max_in_flight``
  slots, so requests from ``VLMClient.map`` (a pool of that many threads) or from any other
  threads never exceed it.
* API key: read from the environment variable ``api_key_env`` at request time and sent as
  ``Authorization: Bearer <key>``. The client never stores it in an attribute, log record or
  exception message: every message it builds passes through ``redact`` first.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:1234/v1/chat/completions"
DEFAULT_MODEL = "qwen2-vl-7b-instruct"
DEFAULT_API_KEY_ENV = "FRESNEL_VLM_API_KEY"
RETRYABLE_STATUS = frozenset({429, *range(500, 600)})
BODY_CHUNK = 1 << 16
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")

T = TypeVar("T")
R = TypeVar("R")


class VLMError(RuntimeError):
    """A request to the VLM server failed; the message names the URL and the cause."""

    @property
    def reason(self) -> str:
        return str(self)


class VLMConnectionError(VLMError):
    """No connection to the server (refused, reset, DNS, connect timeout)."""


class VLMTimeout(VLMError):
    """The server accepted the request but did not answer within the read timeout."""


class VLMHTTPError(VLMError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class VLMResponseError(VLMError):
    """The server answered 200 with a body that is not a chat completion."""


@dataclass(frozen=True)
class ClientConfig:
    """Everything that shapes requests; times in seconds."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    temperature: float = 0.1
    max_tokens: int = 1024
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 0.25
    retry_after_max: float = 120.0
    max_in_flight: int = 2
    api_key_env: str | None = DEFAULT_API_KEY_ENV

    def __post_init__(self):
        if not urlsplit(self.url).scheme.startswith("http") or not urlsplit(self.url).netloc:
            raise ValueError(f"vlm url must be an http(s) URL, got {redact_url(self.url)!r}")
        if not self.model:
            raise ValueError("vlm model name is empty: set it to the model loaded in LM Studio")
        if self.retries < 0 or self.max_in_flight < 1 or self.max_tokens < 1:
            raise ValueError(
                f"need retries >= 0, max_in_flight >= 1, max_tokens >= 1; got {self.retries}, "
                f"{self.max_in_flight}, {self.max_tokens}"
            )
        timings = (self.connect_timeout, self.read_timeout, self.backoff, self.backoff_max)
        if min(timings) < 0 or self.connect_timeout == 0 or self.read_timeout == 0:
            raise ValueError(f"timeouts must be > 0 and backoffs >= 0, got {timings}")
        if self.jitter < 0 or self.retry_after_max < 0:
            raise ValueError("jitter and retry_after_max must be >= 0")


@dataclass
class Outcome:
    """One item of `VLMClient.map`: its value, or the error it raised."""

    item: Any
    value: Any = None
    error: BaseException | None = None


def redact_url(url: str) -> str:
    """`url` without user:password@ (a URL may carry credentials too)."""
    return _URL_CREDENTIALS.sub(r"\1***@", url)


def models_url(chat_url: str) -> str:
    """The /models endpoint beside a chat/completions URL (the guide's `curl .../v1/models`)."""
    parts = urlsplit(chat_url)
    path = parts.path.rstrip("/")
    suffix = "/chat/completions"
    base = path[: -len(suffix)] if path.endswith(suffix) else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, base + "/models", "", ""))


def sniff_mime(data: bytes) -> str | None:
    """'image/png' or 'image/jpeg' from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def image_data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def chat_payload(config: ClientConfig, prompt: str, image: bytes, mime: str) -> dict:
    """The chat/completions body: one user message holding the prompt and the image."""
    return {
        "model": config.model,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "stream": False,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": image_data_url(image, mime)}},
                ],
            }
        ],
    }


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _completion_text(body: Any) -> str:
    """choices[0].message.content as text (a list of parts is joined)."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message.content in the response") from None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not text")
    return content


class VLMClient:
    """Talks to one server with one `ClientConfig`; safe to share between threads.

    `sleep` and `rng` are injectable so tests can record backoff waits without waiting.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.config = config or ClientConfig()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._slots = threading.BoundedSemaphore(self.config.max_in_flight)
        self._lock = threading.Lock()
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"VLMClient(url={redact_url(self.config.url)!r}, model={self.config.model!r})"

    @property
    def provider_name(self) -> str:
        return f"vlm:{self.config.model}"

    # ---------------------------------------------------------------- secrets

    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        return (os.environ.get(name) or None) if name else None

    def redact(self, text: str) -> str:
        """`text` with the API key (and URL credentials) replaced by ***."""
        key = self._api_key()
        if key:
            text = text.replace(key, "***")
        return _URL_CREDENTIALS.sub(r"\1***@", text)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # ---------------------------------------------------------------- requests

    def chat(self, prompt: str, image: bytes, mime: str | None = None) -> str:
        """Send `prompt` with one encoded image (PNG or JPEG bytes); return the answer text."""
        mime = mime or sniff_mime(image)
        if mime is None:
            raise ValueError("image bytes are neither PNG nor JPEG; encode the image first")
        body = self._request(
            "POST", self.config.url, chat_payload(self.config, prompt, image, mime)
        )
        try:
            return _completion_text(body)
        except ValueError as exc:
            raise VLMResponseError(self._message(self.config.url, str(exc))) from None

    def list_models(self) -> list[str]:
        """Model ids the server offers (GET {base}/v1/models); the guide's connectivity check."""
        url = models_url(self.config.url)
        body = self._request("GET", url, None)
        try:
            return [str(entry["id"]) for entry in body["data"]]
        except (KeyError, TypeError):
            raise VLMResponseError(self._message(url, "no data[].id list in the answer")) from None

    def _request(self, method: str, url: str, payload: dict | None) -> Any:
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            body, failure, retry_after = self._attempt(method, url, payload)
            if failure is None:
                return body
            if attempt + 1 == attempts:
                raise failure
            delay = self._delay(attempt, retry_after)
            log.warning(
                "VLM request failed (%s); retry %d/%d in %.2f s",
                failure, attempt + 1, attempts - 1, delay,
            )  # fmt: skip
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, method: str, url: str, payload: dict | None):
        """(decoded body, None, None) on success, (None, VLMError, Retry-After) on a failure
        that a retry may fix.

        Raises at once for failures that a retry cannot fix.
        """
        timeout = (self.config.connect_timeout, self.config.read_timeout)
        deadline = _Deadline(self.config.read_timeout)
        try:
            with self._slots, deadline, _session_cut_at_deadline() as session:
                with self._lock:
                    self.requests_sent += 1
                response = session.request(
                    method, url, json=payload, headers=self._headers(), timeout=timeout,
                    stream=True,
                )  # fmt: skip
                data = _read_body(response)
        except requests.exceptions.ConnectTimeout:
            return None, VLMConnectionError(self._cannot_connect(url, "connect timeout")), None
        except _RETRYABLE as exc:
            return None, self._failure(url, exc, deadline.passed), None
        if deadline.passed:
            return None, self._failure(url, TimeoutError(), True), None
        return self._decode(response, data, url)

    def _failure(self, url: str, exc: BaseException, deadline_passed: bool) -> VLMError:
        """The retryable error for a request that ended in `exc`."""
        if deadline_passed or isinstance(exc, (requests.exceptions.Timeout, TimeoutError)):
            detail = f"no complete answer within the read timeout of {self.config.read_timeout} s"
            return VLMTimeout(self._message(url, detail))
        detail = _short(exc)
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return VLMConnectionError(self._message(url, f"the answer was cut off ({detail})"))
        if detail in _DROPPED:  # the server is up but dropped this request
            return VLMConnectionError(
                self._message(url, f"the server closed the connection ({detail})")
            )
        return VLMConnectionError(self._cannot_connect(url, detail))

    def _decode(self, response: requests.Response, data: bytes, url: str):
        status = response.status_code
        if status == 200:
            try:
                return json.loads(data), None, None
            except ValueError:
                raise VLMResponseError(self._message(url, "200 answer is not JSON")) from None
        snippet = " ".join(data[:300].decode("utf-8", "replace").split())
        error = VLMHTTPError(self._message(url, f"HTTP {status}: {snippet}"), status)
        if status not in RETRYABLE_STATUS:
            raise error
        return None, error, parse_retry_after(response.headers.get("Retry-After"))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.config.backoff_max, self.config.backoff * 2**attempt)
        delay = base * (1 + self.config.jitter * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.retry_after_max))
        return delay

    def _message(self, url: str, detail: str) -> str:
        return self.redact(f"VLM request to {url} failed: {detail}")

    def _cannot_connect(self, url: str, detail: str) -> str:
        return self.redact(
            f"Cannot connect to VLM at {url}: start LM Studio (or another OpenAI-compatible "
            f"server), load a vision model, and check that `curl {models_url(self.config.url)}` "
            f"answers; or choose the offline provider explicitly ({detail})"
        )

    # ---------------------------------------------------------------- concurrency

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T] | Iterable[T],
        *,
        catch: tuple[type[BaseException], ...] = (Exception,),
        desc: str = "vlm",
        progress: bool = True,
    ) -> list[Outcome]:
        """fn(item) for every item on `max_in_flight` threads; outcomes in input order.

        Exceptions of the `catch` types land in `Outcome.error`; any other exception stops
        the map (after the running calls finish) and propagates.
        """
        items = list(items)
        outcomes = [Outcome(item) for item in items]
        workers = min(self.config.max_in_flight, max(1, len(items)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlm") as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
            try:
                for future in as_completed(futures):
                    outcome = outcomes[futures[future]]
                    try:
                        outcome.value = future.result()
                    except catch as exc:
                        outcome.error = exc
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return outcomes


_DROPPED = ("remote end closed", "connection reset")


class _Deadline:
    """Shuts down the sockets a request opens `seconds` after each connects.

    requests' read timeout restarts with every byte, so without this a server that drips its
    status line, headers or body would hold a request open for ever. Entered by the thread
    that sends the request; `passed` tells whether it cut anything.
    """

    _current = threading.local()

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._timers: list[threading.Timer] = []

    def __enter__(self) -> _Deadline:
        _Deadline._current.value = self
        return self

    def __exit__(self, *exc) -> None:
        _Deadline._current.value = None
        for timer in self._timers:
            timer.cancel()

    @classmethod
    def watch(cls, sock: socket.socket) -> None:
        deadline = getattr(cls._current, "value", None)
        if deadline is not None:
            timer = threading.Timer(deadline.seconds, deadline._cut, (sock,))
            timer.daemon = True
            timer.start()
            deadline._timers.append(timer)

    def _cut(self, sock: socket.socket) -> None:
        self.passed = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _Deadline.watch(self.sock)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _Deadline.watch(self.sock)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _CutAtDeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections a `_Deadline` watches."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def _session_cut_at_deadline() -> requests.Session:
    """A session of its own per request: fresh connections, so each is watched."""
    session = requests.Session()
    session.mount("http://", _CutAtDeadlineAdapter())
    session.mount("https://", _CutAtDeadlineAdapter())
    return session


_RETRYABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    TimeoutError,
)


def _read_body(response: requests.Response) -> bytes:
    """The whole body, read as it arrives."""
    chunks = []
    try:
        while chunk := response.raw.read1(BODY_CHUNK, decode_content=True):
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(exc) from None
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    finally:
        response.close()
    return b"".join(chunks)


def _short(exc: BaseException) -> str:
    """A one-line cause: the innermost 'Connection refused'-style text when there is one."""
    text = " ".join(str(exc).split())
    for marker in (
        "Connection refused",
        "Connection reset",
        "Remote end closed",
        "Name or service",
    ):
        if marker in text:
            return marker.lower()
    return text[:200]
