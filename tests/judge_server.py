"""A loopback judge for the evaluation tests: a real HTTP server on 127.0.0.1 speaking chat-completions.

It checks every request the way a strict endpoint would (model name, API key, upstream's message layout and
prompt text, both images decodable) and records violations, answers with scores seeded by the two images'
hashes, and can misbehave on purpose: HTTP 429 with ``Retry-After``, HTTP 500, answers slower than the
client's timeout, garbage or out-of-range text, holding an answer back until released, echoing the API key,
an HTML page instead of JSON, or a 7 MB answer.

Example:
    >>> with JudgeServer(model="judge-1", prompt=UPSTREAM_PROMPT) as server:
    ...     server.url                     # 'http://127.0.0.1:<port>/v1'
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

SYSTEM_MESSAGE = "You are a helpful assistant."
#: What the server does with one request: "ok", "429", "500", "slow", "garbage", "out_of_range", "hold", and the
#: hostile ones: "echo_key_401", "echo_key_403", "echo_key_200" (the Authorization header sent back in an error or
#: an answer), "html" (a 200 web page instead of JSON), "huge" (a 7 MB answer).
Plan = Callable[[tuple[str, str], int, int], str]
_MAX_BODY = 64 << 20


def seeded_score(key: tuple[str, str], seed: int = 0) -> int:
    """The judge's score of a pair: 0-10 from the hashes of both images (order matters)."""
    digest = hashlib.sha256(f"{seed}:{key[0]}:{key[1]}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 11


def always_ok(key: tuple[str, str], attempt: int, number: int) -> str:
    return "ok"


@dataclass
class Logged:
    key: tuple[str, str]
    attempt: int
    action: str
    temperature: float | None


class JudgeServer:
    """See the module docstring. ``plan(key, attempt, number)`` picks the action: ``attempt`` counts the
    requests for this pair (1 = first), ``number`` all requests (1 = first)."""

    def __init__(
        self,
        *,
        model: str,
        prompt: str,
        api_key: str | None = None,
        plan: Plan = always_ok,
        seed: int = 0,
        slow_seconds: float = 2.0,
        hold_seconds: float = 30.0,
    ) -> None:
        self.model = model
        self.prompt = prompt
        self.api_key = api_key
        self.plan = plan
        self.seed = seed
        self.slow_seconds = slow_seconds
        self.hold_seconds = hold_seconds
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.log: list[Logged] = []
        self.answered: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.attempts: Counter = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        server = self
        handler = type("Handler", (_Handler,), {"server_state": server})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def requested_keys(self) -> list[tuple[str, str]]:
        with self.lock:
            return [entry.key for entry in self.log]

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()
            self.answered.clear()
            self.attempts.clear()


def _decode_image(url: object) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError(f"not a base64 image data URI: {str(url)[:40]!r}")
    data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
    return data


class _Handler(BaseHTTPRequestHandler):
    server_state: JudgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> bool:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return True
        except OSError:  # the client gave up (timeout) or was killed
            return False

    def _raw(self, status: int, body: bytes, content_type: str) -> bool:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return True
        except OSError:
            return False

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> bool:
        return self._reply(status, {"error": {"message": message, "type": "test", "code": status}}, headers)

    def _check(self, request: dict) -> tuple[tuple[str, str], float | None]:
        """The pair's key (SHA-256 of both images' bytes); raises ValueError naming what is wrong."""
        state = self.server_state
        messages = request.get("messages")
        if not isinstance(messages, list) or len(messages) != 2:
            raise ValueError("expected a system and a user message")
        if messages[0] != {"role": "system", "content": SYSTEM_MESSAGE}:
            raise ValueError(f"system message is {messages[0]!r}")
        user = messages[1]
        content = user.get("content") if user.get("role") == "user" else None
        kinds = [part.get("type") for part in content] if isinstance(content, list) else None
        if kinds != ["text", "image_url", "image_url"]:
            raise ValueError("user content must be [text, image_url, image_url] (upstream's order)")
        if content[0].get("text") != state.prompt:
            raise ValueError("the prompt text differs from the expected prompt")
        first = _decode_image(content[1]["image_url"].get("url"))
        second = _decode_image(content[2]["image_url"].get("url"))
        key = (hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest())
        return key, request.get("temperature")

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        state = self.server_state
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= _MAX_BODY:
            self._error(413, "body missing or too large")
            return
        raw = self.rfile.read(length)
        if state.api_key is not None and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            self._error(401, "invalid API key")
            return
        try:
            request = json.loads(raw)
            if request.get("model") != state.model:
                self._error(404, f"model {request.get('model')!r} not found")
                return
            key, temperature = self._check(request)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
            with state.lock:
                state.violations.append(str(err))
            self._error(400, f"bad request: {err}")
            return
        with state.lock:
            state.attempts[key] += 1
            attempt = state.attempts[key]
            number = len(state.log) + 1
            action = state.plan(key, attempt, number)
            state.log.append(Logged(key, attempt, action, temperature))
        echoed = f"Incorrect API key provided: {self.headers.get('Authorization')}"
        if action in ("echo_key_401", "echo_key_403"):
            self._error(int(action[-3:]), echoed)
        elif action == "html":
            page = b"<!doctype html><html><head><title>Welcome</title></head><body>Sign in</body></html>"
            self._raw(200, page, "text/html; charset=utf-8")
        elif action == "429":
            self._error(429, "rate limited", {"retry-after-ms": "20"})
        elif action == "500":
            self._error(500, "internal error", {"retry-after-ms": "20"})
        else:
            if action == "slow":
                time.sleep(state.slow_seconds)
            elif action == "hold":
                state.release.wait(state.hold_seconds)
                self.close_connection = True
                return  # never answered: the test killed the client meanwhile
            text = {
                "garbage": "I cannot compare these images.",
                "out_of_range": "15",
                "echo_key_200": f"7. {echoed}",
                "huge": "7 " + "because " * 900_000,
            }.get(action, str(seeded_score(key, state.seed)))
            payload = {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": state.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            if self._reply(200, payload) and action != "slow":
                with state.lock:
                    state.answered.append(key)
            with contextlib.suppress(OSError):
                self.wfile.flush()
