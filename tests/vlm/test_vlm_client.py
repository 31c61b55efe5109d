"""The chat/completions client against a real loopback server (no internet)."""

from __future__ import annotations

import io
import logging
import random
import socket
import time
from email.utils import formatdate

import pytest
from PIL import Image

from fresnel.vlm.client import (
    ClientConfig,
    VLMClient,
    VLMConnectionError,
    VLMHTTPError,
    VLMResponseError,
    VLMTimeout,
    models_url,
    parse_retry_after,
    redact_url,
)
from support.chat_server import ChatServer, Reply, image_of, prompt_of

KEY_ENV = "FRESNEL_TEST_VLM_KEY"
SECRET = "sk-test-7f3c9e1d-SECRET"


def _png(colour=(200, 30, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _client(url: str, sleeps: list | None = None, **overrides) -> VLMClient:
    settings = {
        "url": url,
        "model": "test-vlm",
        "connect_timeout": 0.5,
        "read_timeout": 2.0,
        "retries": 2,
        "backoff": 0.01,
        "jitter": 0.0,
        "api_key_env": KEY_ENV,
        **overrides,
    }
    record = sleeps.append if sleeps is not None else (lambda seconds: None)
    return VLMClient(ClientConfig(**settings), sleep=record, rng=random.Random(0))


def _free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chat_sends_prompt_image_and_settings():
    png = _png()
    with ChatServer(lambda request: "the answer") as server:
        client = _client(server.url, temperature=0.3, max_tokens=77)
        assert client.chat("rate this", png) == "the answer"
    body = server.bodies[0]
    assert body["model"] == "test-vlm"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77
    assert prompt_of(body) == "rate this"
    assert image_of(body) == png
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


def test_content_as_list_of_parts_is_joined():
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}
    with ChatServer(lambda request: Reply(200, parts)) as server:
        assert _client(server.url).chat("q", _png()) == "ab"


def test_malformed_200_is_a_response_error_not_retried():
    with ChatServer(lambda request: Reply(200, {"unexpected": True})) as server:
        with pytest.raises(VLMResponseError, match="choices"):
            _client(server.url).chat("q", _png())
        assert server.requests == 1


def test_list_models_uses_the_guides_endpoint():
    with ChatServer(models=("qwen2-vl", "other")) as server:
        assert _client(server.url).list_models() == ["qwen2-vl", "other"]
        assert server.model_requests == 1
    assert models_url("http://localhost:1234/v1/chat/completions") == (
        "http://localhost:1234/v1/models"
    )
    assert models_url("http://host:8080/") == "http://host:8080/v1/models"


def test_refused_connection_names_the_url_and_lm_studio():
    url = f"http://127.0.0.1:{_free_port()}/v1/chat/completions"
    sleeps: list[float] = []
    client = _client(url, sleeps)
    with pytest.raises(VLMConnectionError) as info:
        client.list_models()
    message = str(info.value)
    assert message.startswith(f"Cannot connect to VLM at {url.replace('chat/completions', '')}")
    assert "start LM Studio" in message and "curl" in message
    assert len(sleeps) == 2  # retried twice
    with pytest.raises(VLMConnectionError, match=f"Cannot connect to VLM at {url}"):
        client.chat("q", _png())


def test_read_timeout_is_retried_then_raised():
    sleeps: list[float] = []
    with ChatServer(delay=0.6) as server:
        client = _client(server.url, sleeps, read_timeout=0.1, retries=2)
        start = time.monotonic()
        with pytest.raises(VLMTimeout, match=r"read timeout of 0\.1 s"):
            client.chat("q", _png())
        assert time.monotonic() - start < 0.6 * 3
        assert server.requests == 3
    assert sleeps == [0.01, 0.02]


def test_read_timeout_bounds_the_whole_answer_not_each_socket_read():
    """A server dripping one byte every 0.2 s never trips a 1 s per-read timeout; the client
    gives up once the whole answer has taken longer than read_timeout."""
    with ChatServer(drip=0.2) as server:
        client = _client(server.url, read_timeout=1.0, retries=0)
        start = time.monotonic()
        with pytest.raises(VLMTimeout, match=r"no complete answer within the read timeout"):
            client.chat("q", _png())
        assert time.monotonic() - start < 3.0  # the whole body would take ~40 s


def test_read_timeout_bounds_a_server_that_drips_its_status_line_and_headers():
    """Each header byte arrives within the per-read timeout; the whole answer never does."""
    with ChatServer(drip_headers=0.2) as server:
        client = _client(server.url, read_timeout=1.0, retries=0)
        start = time.monotonic()
        with pytest.raises(VLMTimeout) as caught:
            client.chat("q", _png())
        assert time.monotonic() - start < 3.0  # the headers alone would take ~17 s
    message = str(caught.value)
    assert "no complete answer within the read timeout of 1.0 s" in message
    assert "\n" not in message


def test_slow_server_within_the_timeout_succeeds_without_retry():
    sleeps: list[float] = []
    with ChatServer(lambda request: "slow but fine", delay=0.3) as server:
        assert _client(server.url, sleeps, read_timeout=2.0).chat("q", _png()) == "slow but fine"
        assert server.requests == 1
    assert sleeps == []


def test_500_is_retried_with_exponential_backoff_then_succeeds():
    sleeps: list[float] = []
    with ChatServer(lambda request: "ok", fail_first=2, fail_status=500) as server:
        assert _client(server.url, sleeps, retries=3).chat("q", _png()) == "ok"
        assert server.requests == 3
    assert sleeps == [0.01, 0.02]


def test_500_until_retries_run_out():
    with ChatServer(fail_first=10, fail_status=503) as server:
        with pytest.raises(VLMHTTPError) as info:
            _client(server.url, retries=2).chat("q", _png())
        assert info.value.status == 503 and "HTTP 503" in str(info.value)
        assert server.requests == 3


def test_429_honours_retry_after_then_succeeds():
    sleeps: list[float] = []
    with ChatServer(lambda request: "ok", fail_first=1, fail_status=429, retry_after="3") as server:
        assert _client(server.url, sleeps).chat("q", _png()) == "ok"
        assert server.requests == 2
    assert sleeps == [3.0]  # the header's 3 s, not the 0.01 s backoff


def test_retry_after_forms_and_cap():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, 1)
    sleeps: list[float] = []
    with ChatServer(lambda request: "ok", fail_first=1, fail_status=429, retry_after="999") as s:
        _client(s.url, sleeps, retry_after_max=1.5).chat("q", _png())
    assert sleeps == [1.5]


def test_other_4xx_is_not_retried():
    sleeps: list[float] = []
    with ChatServer(lambda request: Reply(400, {"error": "bad image"})) as server:
        with pytest.raises(VLMHTTPError) as info:
            _client(server.url, sleeps).chat("q", _png())
        assert info.value.status == 400 and "bad image" in str(info.value)
        assert server.requests == 1
    assert sleeps == []


def test_closed_connection_is_retried():
    with ChatServer(lambda request: "ok", close_first=1) as server:
        assert _client(server.url).chat("q", _png()) == "ok"
        assert server.requests == 2
    with ChatServer(close_first=5) as server:
        with pytest.raises(VLMConnectionError, match="the server closed the connection"):
            _client(server.url, retries=1).chat("q", _png())
        assert server.requests == 2


def test_jitter_stays_within_its_bound():
    client = _client("http://127.0.0.1:9/v1/chat/completions", backoff=0.1, jitter=0.5)
    delays = [client._delay(attempt, None) for attempt in range(4) for _ in range(50)]
    for attempt in range(4):
        chunk = delays[attempt * 50 : (attempt + 1) * 50]
        base = 0.1 * 2**attempt
        assert all(base <= d <= base * 1.5 for d in chunk)
        assert max(chunk) > min(chunk)  # jitter really varies
    capped = _client("http://127.0.0.1:9/x", backoff=1.0, backoff_max=2.0, jitter=0)
    assert capped._delay(5, None) == 2.0


def until_in_flight(server: ChatServer, limit: int, timeout: float = 10.0):
    """A ChatServer delay that holds each answer until `limit` requests were in flight at
    once (or `timeout`), so the test does not depend on how fast a loaded machine is."""

    def delay(number: int) -> float:
        deadline = time.monotonic() + timeout
        while server.max_concurrent < limit and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0.0

    return delay


@pytest.mark.parametrize("limit", [1, 3])
def test_in_flight_limit_is_respected_by_map(limit):
    server = ChatServer(lambda request: prompt_of(request).upper())
    server.delay = until_in_flight(server, limit)
    with server:
        client = _client(server.url, max_in_flight=limit)
        outcomes = client.map(lambda word: client.chat(word, _png()), list("abcdef"))
        assert [o.value for o in outcomes] == list("ABCDEF")
        assert server.max_concurrent == limit


def test_in_flight_limit_holds_for_callers_with_their_own_threads():
    from concurrent.futures import ThreadPoolExecutor

    with ChatServer(lambda request: "ok", delay=0.1) as server:
        client = _client(server.url, max_in_flight=2)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: client.chat("q", _png()), range(6)))
        assert server.max_concurrent == 2
        assert client.requests_sent == 6


def test_map_keeps_errors_per_item_in_order():
    def answer(request):
        return Reply(400, "no") if prompt_of(request) == "bad" else "fine"

    with ChatServer(answer) as server:
        client = _client(server.url)
        outcomes = client.map(lambda p: client.chat(p, _png()), ["ok", "bad", "ok"], progress=False)
    assert [o.value for o in outcomes] == ["fine", None, "fine"]
    assert isinstance(outcomes[1].error, VLMHTTPError)
    with pytest.raises(ZeroDivisionError):  # not in `catch`: propagates
        client.map(lambda x: 1 / x, [1, 0], catch=(VLMHTTPError,), progress=False)


def test_api_key_is_sent_as_bearer_and_never_shown(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)

    def echo_auth(request):  # a hostile server that echoes the header into its errors
        return Reply(500, {"error": f"denied for {server.headers[-1]['Authorization']}"})

    caplog.set_level(logging.DEBUG)
    with ChatServer(echo_auth) as server:
        client = _client(server.url)
        with pytest.raises(VLMHTTPError) as info:
            client.chat("q", _png())
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert "denied for Bearer ***" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(client), caplog.text):
        assert SECRET not in text
    assert "retry" in caplog.text  # the retries were logged, redacted


def test_no_key_means_no_authorization_header(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatServer(lambda request: "ok") as server:
        _client(server.url).chat("q", _png())
    assert "Authorization" not in server.headers[0]


def test_url_credentials_are_redacted():
    assert redact_url("http://user:pw@host:1/v1/x") == "http://***@host:1/v1/x"
    client = _client(f"http://user:pw@127.0.0.1:{_free_port()}/v1/chat/completions", retries=0)
    with pytest.raises(VLMConnectionError) as info:
        client.chat("q", _png())
    assert "pw" not in str(info.value) and "***@127.0.0.1" in str(info.value)


def test_config_is_validated():
    with pytest.raises(ValueError, match="http"):
        ClientConfig(url="localhost:1234")
    with pytest.raises(ValueError, match="model"):
        ClientConfig(model="")
    with pytest.raises(ValueError, match="max_in_flight"):
        ClientConfig(max_in_flight=0)
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        _client("http://127.0.0.1:9/x").chat("q", b"GIF89a...")
