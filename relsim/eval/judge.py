"""The VLM judge: upstream's prompt and protocol over any OpenAI-compatible chat-completions endpoint.

Upstream (``retrieval/gptscore.py``) sends one chat request per (query, match) pair: a system message
``"You are a helpful assistant."`` and a user message holding the prompt text, then image 1 (the query), then
image 2 (the match), each as a base64 data URI, at temperature 0.7; the score is the first number of the
answer, kept when 0 <= x <= 10. relsim sends exactly that, through the official ``openai`` client
(``pip install "relsim[eval]"``; imported only when a judge is used), with temperature 0 by default.

The client retries 429s, 5xx answers, timeouts and dropped connections with exponential back-off (and honours
``Retry-After``), a bounded number of times. Every answer is stored in a :class:`JudgeCache` (SQLite) as soon
as it arrives, keyed by (judge model, prompt SHA-256, temperature, query SHA-256, match SHA-256, sample
index), so a rerun or a resumed run never asks the same question twice; answers that do not parse are kept
too (they were paid for) and counted. The API key is read from an environment variable and never written or
printed: every error message and answer is passed through :func:`redact` (the key's value, ``Bearer ...`` and
``sk-...`` tokens), because endpoints echo the key back ("Incorrect API key provided: Bearer sk-...").

Example:
    >>> judge = Judge(JudgeSettings(model="gpt-4o"), JudgeCache("out/judge_cache.sqlite"))  # doctest: +SKIP
    >>> verdicts = judge.run([("q.png", "m.png")])                                          # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batching import progress_bar
from ..errors import ArgumentError, JudgeError

__all__ = [
    "UPSTREAM_PROMPT",
    "SYSTEM_MESSAGE",
    "DEFAULT_JUDGE_URL",
    "JudgeSettings",
    "JudgeCache",
    "JudgeError",
    "Judge",
    "JudgeRequest",
    "Verdict",
    "check_ready",
    "parse_score",
    "prompt_sha256",
    "redact",
]

#: The judge prompt of upstream's ``retrieval/gptscore.py``, verbatim (tests compare it with the fixture).
UPSTREAM_PROMPT = """
You are given two images.
Your task is to determine whether these two images share a similar underlying logic\u2014that is, whether they form an analogical pair.

Do NOT base your judgment on visual similarity (e.g., color, shape, composition) or semantic similarity (such as both showing the same object or class). 
Images that are visually or semantically similar but do NOT share the same underlying logic should receive a very low score.

Focus ONLY on whether the two images convey the same conceptual or relational logic. 
For example, if one image shows a peach's internal structures, and the other shows a Earth's internal structures, they share the same logic and should receive a very high score.

Output a single numerical score between 0 and 10, where:
10 = very strong analogical/relational similarity (same underlying logic)
0 = no logical/relational similarity

Output only the number.
"""  # noqa: E501, W291 (verbatim, trailing spaces included)
SYSTEM_MESSAGE = "You are a helpful assistant."
DEFAULT_JUDGE_URL = "https://api.openai.com/v1"
_NUMBER = re.compile(r"\b(\d+\.?\d*)\b")
#: Credentials an endpoint may echo: ``Bearer <token>`` and OpenAI-style ``sk-...`` keys (masked ones included).
_TOKEN = r"[^\s\"',;)}\]]*[^\s\"',;)}\].]"  # up to a quote, bracket or space; a final full stop is not part of it
_CREDENTIAL = re.compile(rf"(?i)\bBearer\s+{_TOKEN}|\bsk-{_TOKEN}")
REDACTED = "[redacted]"
# Formats every OpenAI-compatible vision endpoint takes; others are re-encoded as PNG.
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def parse_score(answer: str | None) -> float | None:
    """Upstream's parsing: the first number in the answer, kept if 0 <= x <= 10, else None.

    Example:
        >>> parse_score("8"), parse_score("Score: 7.5/10"), parse_score("12"), parse_score("no idea")
        (8.0, 7.5, None, None)
    """
    if not answer:
        return None
    match = _NUMBER.search(answer)
    if match is None:
        return None
    score = float(match.group(1))
    return score if 0 <= score <= 10 else None


def redact(text: str, secret: str | None = None) -> str:
    """``text`` without credentials: the value ``secret`` (the API key) and any ``Bearer ...`` or ``sk-...``
    token become ``[redacted]``.

    Example:
        >>> redact("Incorrect API key provided: Bearer sk-abc123. Try again", "sk-abc123")
        'Incorrect API key provided: [redacted]. Try again'
    """
    text = _CREDENTIAL.sub(REDACTED, text)
    return text.replace(secret, REDACTED) if secret and len(secret) >= 4 else text


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class JudgeSettings:
    """Where and how to ask. ``key_env`` names the environment variable holding the API key."""

    model: str
    url: str = DEFAULT_JUDGE_URL
    key_env: str = "OPENAI_API_KEY"
    prompt: str = UPSTREAM_PROMPT
    prompt_source: str = "upstream retrieval/gptscore.py"
    temperature: float = 0.0
    samples: int = 1
    concurrency: int = 8
    retries: int = 5
    timeout: float = 120.0
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ArgumentError("the judge model is empty: pass --judge-model NAME")
        if not 0 <= self.temperature <= 2:
            raise ArgumentError(f"judge temperature must be in [0, 2], got {self.temperature}")
        for name in ("samples", "concurrency"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"judge {name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.timeout <= 0:
            raise ArgumentError("judge retries must be >= 0 and the timeout > 0")
        if not self.prompt.strip():
            raise ArgumentError("the judge prompt is empty")

    @property
    def prompt_sha256(self) -> str:
        return prompt_sha256(self.prompt)

    def describe(self) -> dict[str, Any]:
        """What the results record about the judge (never the key, only the variable's name)."""
        return {
            "url": self.url,
            "model": self.model,
            "temperature": self.temperature,
            "samples_per_pair": self.samples,
            "prompt_sha256": self.prompt_sha256,
            "prompt_source": self.prompt_source,
            "system_message": SYSTEM_MESSAGE,
            "api_key_env": self.key_env,
            "max_retries": self.retries,
            "timeout_s": self.timeout,
            "max_tokens": self.max_tokens,
        }


@dataclass(frozen=True)
class JudgeRequest:
    """One question: is ``match`` an analogy of ``query``? ``sample`` tells repeated samples apart."""

    query_sha256: str
    query_path: str
    match_sha256: str
    match_path: str
    sample: int = 0


@dataclass
class Verdict:
    """The judge's answer to one request, or why there is none."""

    answer: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def score(self) -> float | None:
        return parse_score(self.answer) if self.error is None else None


class JudgeCache:
    """Answers on disk (SQLite, one row per request, committed as it arrives).

    Example:
        >>> cache = JudgeCache("out/judge_cache.sqlite")   # doctest: +SKIP
        >>> len(cache)                                      # doctest: +SKIP
        1000
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt_sha256 TEXT, "
                "temperature TEXT, query_sha256 TEXT, match_sha256 TEXT, sample INTEGER, answer TEXT, "
                "url TEXT, created_at TEXT)"
            )

    @staticmethod
    def key(settings: JudgeSettings, request: JudgeRequest) -> tuple[str, str, str, str, str, int]:
        return (
            settings.model,
            settings.prompt_sha256,
            repr(float(settings.temperature)),
            request.query_sha256,
            request.match_sha256,
            request.sample,
        )

    @staticmethod
    def _id(key: tuple) -> str:
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (self._id(key),)).fetchone()
        return None if row is None else row[0]

    def put(self, key: tuple, answer: str, url: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._id(key), *key, answer, url, stamp),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def image_data_uri(path: str | os.PathLike) -> str:
    """The file as a base64 data URI, its bytes as they are (upstream sends the file); a format that vision
    endpoints do not take (BMP, TIFF, ...) is sent as PNG of relsim's decoding."""
    from PIL import Image

    data = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
    except OSError:
        kind = None
    if kind not in _MIME:
        from ..preprocess import decode

        buffer = io.BytesIO()
        decode(path, 0).save(buffer, format="PNG")
        data, kind = buffer.getvalue(), "PNG"
    return f"data:{_MIME[kind]};base64,{base64.b64encode(data).decode('ascii')}"


def messages_for(prompt: str, query_path: str, match_path: str) -> list[dict[str, Any]]:
    """Upstream's chat: system message, then [prompt text, image 1 (query), image 2 (match)]."""
    content = [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": image_data_uri(query_path)}},
        {"type": "image_url", "image_url": {"url": image_data_uri(match_path)}},
    ]
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": content}]


def _api_key(settings: JudgeSettings, environ: Mapping[str, str]) -> str:
    key = environ.get(settings.key_env)
    if key:
        return key
    if settings.url.rstrip("/") == DEFAULT_JUDGE_URL:
        raise JudgeError(
            f"the judge needs an API key in ${settings.key_env} (or name another variable with --judge-key-env)"
        )
    return "none"  # local servers (vLLM, Ollama, LM Studio) usually take any key


def check_ready(settings: JudgeSettings, environ: Mapping[str, str] | None = None) -> Any:
    """Fail early (before hours of embedding) when the judge cannot be asked: the ``openai`` package or the
    API key is missing. Returns the ``openai`` module."""
    try:
        import openai
    except ImportError as err:
        raise ImportError('the judge needs the openai package: pip install "relsim[eval]"') from err
    _api_key(settings, os.environ if environ is None else environ)
    return openai


@dataclass
class JudgeProgress:
    asked: int = 0
    cached: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Judge:
    """Asks the judge every request not in the cache, ``settings.concurrency`` at a time.

    Example:
        >>> judge = Judge(settings, JudgeCache("out/judge_cache.sqlite"))   # doctest: +SKIP
        >>> verdicts = judge.run(requests)                                   # doctest: +SKIP
    """

    def __init__(
        self,
        settings: JudgeSettings,
        cache: JudgeCache,
        *,
        environ: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self._environ = os.environ if environ is None else environ
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self._secret = self._environ.get(settings.key_env)
        self._client: Any = None
        self.progress = JudgeProgress()

    def client(self) -> Any:
        if self._client is None:
            openai = check_ready(self.settings, self._environ)
            self._client = openai.OpenAI(
                base_url=self.settings.url,
                api_key=_api_key(self.settings, self._environ),
                timeout=self.settings.timeout,
                max_retries=self.settings.retries,
            )
        return self._client

    def ask(self, request: JudgeRequest) -> str:
        """One chat request (with the client's retries); the answer text."""
        kwargs: dict[str, Any] = {"temperature": self.settings.temperature}
        if self.settings.max_tokens is not None:
            kwargs["max_tokens"] = self.settings.max_tokens
        response = self.client().chat.completions.create(
            model=self.settings.model,
            messages=messages_for(self.settings.prompt, request.query_path, request.match_path),
            **kwargs,
        )
        choices = getattr(response, "choices", None)
        if isinstance(choices, list) and not choices:
            return ""
        content = getattr(getattr(choices[0], "message", None), "content", None) if isinstance(choices, list) else ""
        if not isinstance(choices, list) or not isinstance(content, (str, type(None))):
            raise _NotChatCompletions(
                f"it answered with something that is not chat-completions JSON ({_what_came_back(response)}); "
                "check --judge-url (an OpenAI-compatible base URL usually ends in /v1)"
            )
        return content or ""

    def _failure(self, err: BaseException) -> str | None:
        """A per-request failure message, or None when the error means the judge cannot work at all."""
        import openai

        if isinstance(err, _NotChatCompletions):
            return None
        if isinstance(err, openai.APITimeoutError):
            return f"timed out after {self.settings.retries} retries"
        if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)):
            return None
        if isinstance(err, openai.APIConnectionError):
            return None
        if isinstance(err, openai.APIStatusError):
            return f"HTTP {err.status_code}"
        if isinstance(err, openai.APIError):  # e.g. a response that is not chat-completions JSON
            return redact(f"{type(err).__name__}: {err}", self._secret)
        if isinstance(err, (OSError, ValueError)):  # an image that vanished or cannot be encoded
            return redact(f"{type(err).__name__}: {err}", self._secret)
        return None

    def run(self, requests: Sequence[JudgeRequest], *, progress: bool | None = None) -> dict[JudgeRequest, Verdict]:
        """Verdicts for ``requests``: cached answers first, the rest asked concurrently and cached on arrival.

        Requests with the same cache key (the same two images, wherever they lie, and the same sample) are
        asked once. A request that still fails after the retries gets a Verdict with ``error`` (not cached: a
        rerun asks again). An error that no retry can fix (bad key, unknown model, unreachable endpoint)
        raises :class:`JudgeError` once the requests in flight have finished; their answers are cached.
        """
        groups: dict[tuple, list[JudgeRequest]] = {}
        for request in requests:
            groups.setdefault(JudgeCache.key(self.settings, request), []).append(request)
        answers: dict[tuple, Verdict] = {}
        todo: list[tuple] = []
        for key in groups:
            answer = self.cache.get(key)
            if answer is None:
                todo.append(key)
            else:
                answers[key] = Verdict(answer=answer, cached=True)
        self.progress.cached += len(answers)
        if todo:
            self._ask_all(todo, groups, answers, progress)
        return {request: answers[key] for key, group in groups.items() for request in group}

    def _ask_all(self, todo: list[tuple], groups: dict, answers: dict, progress: bool | None) -> None:
        self.client()  # fail on a missing package or key before any thread starts
        bar = progress_bar(len(todo), progress, "judge", unit="pair")
        fatal: BaseException | None = None
        pending: dict[Future, tuple] = {}
        feed = iter(todo)
        threads = ThreadPoolExecutor(self.settings.concurrency)
        interrupted = True
        try:
            while True:
                while fatal is None and len(pending) < 2 * self.settings.concurrency:
                    key = next(feed, None)
                    if key is None:
                        break
                    pending[threads.submit(self.ask, groups[key][0])] = key
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    fatal = self._collect(key, future, answers) or fatal
                    if bar is not None:
                        bar.update(1)
            interrupted = False
        finally:
            threads.shutdown(wait=not interrupted, cancel_futures=True)  # Ctrl-C: do not wait for answers
            if bar is not None:
                bar.close()
        if fatal is not None:
            message = redact(f"the judge at {self.settings.url} cannot be used: {fatal}", self._secret)
            raise JudgeError(message) from None  # the cause's text may hold the key

    def _collect(self, key: tuple, future: Future, answers: dict) -> BaseException | None:
        err = future.exception()
        if err is None:
            answer = redact(future.result(), self._secret)
            self.cache.put(key, answer, self.settings.url)
            answers[key] = Verdict(answer=answer)
            self.progress.asked += 1
            return None
        reason = self._failure(err)
        if reason is None:
            return err
        answers[key] = Verdict(error=reason)
        self.progress.failed += 1
        self.progress.errors[reason] = self.progress.errors.get(reason, 0) + 1
        return None


class _NotChatCompletions(JudgeError):
    """The endpoint answered 200 with something that is not a chat completion (a web page, other JSON)."""


def _what_came_back(response: Any) -> str:
    """What came back instead of a chat completion, briefly: its type and the start of its text."""
    text = " ".join(str(response).split())
    return f"{type(response).__name__} {text[:80]!r}" + ("..." if len(text) > 80 else "")
