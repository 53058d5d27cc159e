"""A model behind any OpenAI-compatible chat-completions server: OpenAI, vLLM (`vllm serve`), llama.cpp's
`llama-server`, `transformers serve`.

This is also the scale-out path: one vLLM server (tensor/data parallel over many GPUs) answers the
benchmark's queries, which this client sends ``concurrency`` at a time (see docs/scale-out.md).

Behaviour worth knowing:
- Images travel as base64 PNG data URLs in ``image_url`` content parts; text-only queries send the
  prompt as a plain string, which every server (and every text-only model) accepts.
- Transient failures (429 honouring Retry-After, 5xx, 408, timeouts, refused or dropped connections)
  are retried with capped exponential backoff and jitter; other 4xx are not (retrying cannot fix a
  bad request) and the server's own message is kept, truncated, in ``Generation.error``.
- ``generate()`` never raises for one bad item: every item gets its answer or its final error.
- The API key is read from the environment variable *named* by ``api_key_env`` and never appears in
  ``describe()``, errors or logs (errors are scrubbed of it in case a server echoes it back).
"""
from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import (
    Generation,
    GenerationConfig,
    LogprobUnsupported,
    ModelBackend,
    OptionProbs,
    Query,
    check_options,
    unsupported_logprobs,
)

#: Most characters of a server's error message kept in ``Generation.error``.
MAX_SERVER_MESSAGE = 300
#: Timed-out attempts after which a query gives up (each one already waited the whole timeout).
MAX_TIMEOUTS = 2
#: Longest wait honoured from a Retry-After header, in seconds (a server may ask for hours).
MAX_RETRY_AFTER = 60.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Environment variables whose values never leave the client in an answer or an error.
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "OPENAI_API_KEY")
_SECRET_QUERY_KEYS = re.compile(r"key|token|secret|sig|password|auth", re.IGNORECASE)


class _Retryable(Exception):
    """A failure worth another attempt; ``wait`` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, wait: float | None = None, timed_out: bool = False):
        super().__init__(message)
        self.wait = wait
        self.timed_out = timed_out


class _Fatal(Exception):
    """A failure no retry can fix (bad request, auth, unreadable image)."""


def public_url(url: str) -> str:
    """``url`` without user:password and with secret-looking query values masked, for records and errors."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    query = urlencode([(k, "REDACTED" if _SECRET_QUERY_KEYS.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def encode_image(image) -> str:
    """A PIL image or an image file as a ``data:image/png;base64,...`` URL (RGB, losslessly re-encoded)."""
    from PIL import Image

    from unsafe_concepts.data.records import load_rgb

    if not isinstance(image, Image.Image):
        image = load_rgb(image, str(image))  # UserError naming the file if missing or unreadable
    elif image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    # Fastest zlib level: the same pixels (PNG is lossless) at ~60% of the default level's CPU time,
    # which matters at hundreds of requests/s; the bytes on the wire do not (loopback or LAN to vLLM).
    image.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(response) -> str:
    """The human part of an error body (OpenAI/vLLM ``error.message``, FastAPI ``detail``), truncated."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif err:
            text = str(err)
        elif body.get("detail"):
            text = json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]
        elif body.get("message"):
            text = str(body["message"])
    text = " ".join(text.split())  # one line: error strings end up in JSONL rows and tables
    if len(text) > MAX_SERVER_MESSAGE:
        text = text[:MAX_SERVER_MESSAGE] + "..."
    return text or "(empty body)"


def _retry_after(response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend(ModelBackend):
    """``openai:<model>``: chat completions from an OpenAI-compatible server at ``base_url``.

    ``supports_images=False`` declares a text-only model: its image queries then fail with a clear
    error without being sent. (Some servers, `transformers serve` among them, silently drop image
    parts sent to a text-only model and answer the text alone; vLLM and OpenAI reject them with a 400.)
    ``backoff_base``/``backoff_cap`` shape the exponential backoff between retries, in seconds.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        timeout: float = 120.0,
        max_retries: int = 5,
        supports_images: bool = True,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
    ):
        if not model:
            raise UserError("openai: model name is empty; use --model openai:<model name the server serves>")
        if not base_url:
            raise UserError(
                f"openai:{model} needs --base-url, the OpenAI-compatible server to query, e.g. a vLLM server "
                "started with `vllm serve <model>`: --base-url http://127.0.0.1:8000/v1 "
                "(for OpenAI itself: https://api.openai.com/v1)"
            )
        parts = urlsplit(base_url)
        try:
            parts.port
        except ValueError:
            raise UserError("--base-url has an invalid port, e.g. http://127.0.0.1:8000/v1") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--base-url {public_url(base_url)!r} is not an http(s) URL, "
                            "e.g. http://127.0.0.1:8000/v1")
        if not _ENV_NAME.match(api_key_env or ""):
            # Never echo the value: a common slip is passing the key itself here.
            raise UserError("--api-key-env must be the NAME of an environment variable holding the key "
                            "(e.g. OPENAI_API_KEY), not the key itself")
        if concurrency < 1:
            raise UserError(f"--concurrency must be at least 1, got {concurrency}")
        if max_retries < 0 or timeout <= 0:
            raise UserError(f"max_retries must be >= 0 and timeout > 0 (got {max_retries}, {timeout})")

        self.model = model
        # The request URL keeps its query (e.g. Azure's api-version); user:password in it becomes HTTP
        # basic auth (e.g. a proxy) unless an API key is set. Only the public form is ever shown.
        self._url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"),
                                parts.query, ""))
        self._basic_auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        self.base_url = public_url(self._url)
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.supports_images = supports_images
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # Missing key is fine: local servers (vLLM, llama.cpp, transformers serve) need none.
        self._api_key = os.environ.get(api_key_env) or None
        self._max_tokens_field = "max_tokens"  # switched once if the server asks for max_completion_tokens
        self._client = None
        self._pool: ThreadPoolExecutor | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:  # short, and free of secrets by construction
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def describe(self) -> dict:
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout,
            "max_retries": self.max_retries,
            "supports_images": self.supports_images,
        }

    def close(self) -> None:
        with self._client_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---- generation ----

    def generate(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        return self._map(lambda client, q, cancel: self._answer(client, q, config, cancel), queries)

    def _map(self, ask, queries: list):
        """``ask(client, query, cancel)`` for every query, ``concurrency`` at a time, results in order."""
        if not queries:
            return []
        client = self._http()
        cancel = threading.Event()
        if self.concurrency == 1 or len(queries) == 1:
            results = []
            for q in queries:
                results.append(ask(client, q, cancel))
                self._report_progress()
            return results
        futures = [self._executor().submit(ask, client, q, cancel) for q in queries]
        for f in futures:
            f.add_done_callback(lambda f: f.cancelled() or self._report_progress())
        try:
            return [f.result() for f in futures]
        except BaseException:
            # Ctrl-C: stop promptly (no waiting out backoffs and queued items); the run store keeps
            # every finished batch, and the next run resumes from there.
            cancel.set()
            for f in futures:
                f.cancel()
            self.close()  # aborts requests in flight
            raise

    def _executor(self) -> ThreadPoolExecutor:
        """One pool of ``concurrency`` workers for the backend's life: starting 64 threads for every
        batch cost more than the requests themselves on a busy 2-core machine."""
        with self._client_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-compat")
            return self._pool

    def _http(self):
        from unsafe_concepts.models.http_transport import make_transport

        with self._client_lock:
            if self._client is None:
                headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                self._client = make_transport(self._url, headers, self.timeout, self.concurrency,
                                              basic_auth=None if self._api_key else self._basic_auth)
            return self._client

    def payload(self, query: Query, config: GenerationConfig) -> dict:
        """The chat-completions request body for one query (images must be allowed by the caller)."""
        if query.image is None:
            content = query.prompt
        else:
            content = [
                {"type": "image_url", "image_url": {"url": encode_image(query.image)}},
                {"type": "text", "text": query.prompt},
            ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            self._max_tokens_field: int(config.max_new_tokens),
            "seed": int(config.seed),
        }
        if config.do_sample:
            body["temperature"] = float(config.temperature)
            body["top_p"] = float(config.top_p)
        else:
            body["temperature"] = 0.0  # greedy: every OpenAI-compatible server reads T=0 as argmax
        return body

    def _answer(self, client, query: Query, config: GenerationConfig,
                cancel: threading.Event | None = None) -> Generation:
        """One query to its Generation; every failure is caught and stated, never raised."""
        def done(parsed, latency):
            text, n_tokens = parsed
            return Generation(text=self._scrub(text), latency_s=latency, n_tokens=n_tokens)

        return self._ask(client, query, lambda q: self.payload(q, config), self._parse, done,
                         lambda error, latency: Generation(text=None, error=error, latency_s=latency), cancel)

    def _ask(self, client, query: Query, make_body, parse, done, fail, cancel: threading.Event | None):
        """Send one query with retries: ``done(parse(response), latency)`` or ``fail(error, latency)``."""
        start = time.monotonic()
        if query.image is not None and not self.supports_images:
            return fail(f"{self.model} is text-only (supports_images=False): image queries are not sent", 0.0)
        try:
            body = make_body(query)
        except UserError as e:
            return fail(self._scrub(str(e)), 0.0)
        except Exception as e:  # noqa: BLE001 - an unexpected image type must not stop the batch
            return fail(self._scrub(f"cannot encode the image: {type(e).__name__}: {e}"), 0.0)

        attempts = self.max_retries + 1
        last = ""
        timeouts = 0
        for attempt in range(attempts):
            if cancel is not None and cancel.is_set():
                return fail("cancelled", time.monotonic() - start)
            t0 = time.monotonic()
            try:
                parsed = self._post(client, body, parse)
                return done(parsed, time.monotonic() - t0)
            except LogprobUnsupported:
                raise  # the server cannot do this at all: stop the whole call, not one item
            except _Fatal as e:
                return fail(self._scrub(f"{e} (not retried)"), time.monotonic() - start)
            except _Retryable as e:
                last = str(e)
                timeouts += e.timed_out
                if timeouts >= MAX_TIMEOUTS:
                    # A server that did not answer within the timeout twice is stuck or overloaded:
                    # more attempts would only multiply the wait (6 x 120 s was 12 minutes).
                    return fail(self._scrub(f"{last}; gave up after {timeouts} timed-out attempts "
                                            "(is the server stuck? a slow server needs a larger --timeout)"),
                                time.monotonic() - start)
                if attempt + 1 < attempts:
                    self._on_retry(query, attempt + 1, attempts, last)
                    (cancel or threading.Event()).wait(self._delay(attempt, e.wait))
            except Exception as e:  # noqa: BLE001 - anything else is stated per item, never raised
                return fail(self._scrub(f"unexpected {type(e).__name__}: {e}"), time.monotonic() - start)
        return fail(self._scrub(f"{last} (gave up after {attempts} attempts)"), time.monotonic() - start)

    def _post(self, client, body: dict, parse=None):
        from unsafe_concepts.models import http_transport as t

        url = self._url + "/chat/completions"
        where = public_url(url)
        try:
            response = client.post(url, body)
        except t.TransportTimeout as e:
            raise _Retryable(f"no answer within the timeout of {self.timeout:g} s ({e}) from {where}",
                             timed_out=True) from None
        except t.TransportConnectError as e:
            raise _Retryable(f"cannot connect to {where}: {e}") from None
        except t.TransportDropped as e:
            raise _Retryable(f"connection to {where} dropped: {e}") from None
        except t.TransportFatal as e:
            raise _Fatal(f"request to {where} failed: {e}") from None

        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _Retryable(f"HTTP {status} from {where}: {_server_message(response)}",
                             wait=_retry_after(response))
        if status >= 400:
            message = _server_message(response)
            if (status == 400 and "max_completion_tokens" in message
                    and self._max_tokens_field == "max_tokens" and "max_tokens" in body):
                # Newer OpenAI models reject max_tokens; switch once for all later requests.
                self._max_tokens_field = "max_completion_tokens"
                retry = {k: v for k, v in body.items() if k != "max_tokens"}
                retry["max_completion_tokens"] = body["max_tokens"]
                return self._post(client, retry, parse)
            if "top_logprobs" in body and "logprob" in message.lower():
                raise unsupported_logprobs(f"the server at {self.base_url} (model {self.model})",
                                           f"it refused the request: HTTP {status}: {self._scrub(message)}")
            hint = " (is --base-url missing the /v1 suffix?)" if status == 404 else ""
            if status == 401:
                hint = (f" (the API key was refused: check the key in ${self.api_key_env})" if self._api_key else
                        f" (the server wants an API key: put it in the environment variable {self.api_key_env})")
            raise _Fatal(f"HTTP {status} from {where}: {message}{hint}")
        if status != 200:
            raise _Fatal(f"unexpected HTTP {status} from {where}: {_server_message(response)}")
        return (parse or self._parse)(response, where)

    # ---- next-token verdicts (logprobs) ----

    supports_logprobs = True
    #: Top log-probabilities asked for: OpenAI's maximum, and vLLM's default ``--max-logprobs``.
    top_logprobs = 20

    def option_probs(self, queries: list[Query], options: Sequence[str]) -> list[OptionProbs]:
        """One token per query with ``logprobs``/``top_logprobs``: the options' masses among the server's
        top-k next tokens (``source`` "top-k"). A server that returns no log-probabilities, or refuses
        them, raises LogprobUnsupported for the whole call."""
        from unsafe_concepts.models import scoring

        options = check_options(options)
        greedy_one = GenerationConfig(max_new_tokens=1, do_sample=False)

        def body(q: Query) -> dict:
            return {**self.payload(q, greedy_one), "logprobs": True, "top_logprobs": self.top_logprobs}

        def done(top, latency):
            return scoring.from_top_logprobs(top, options, self.top_logprobs, latency_s=latency)

        def fail(error, latency):
            return OptionProbs(probs=None, error=error, latency_s=latency, source=f"top-{self.top_logprobs}")

        return self._map(lambda client, q, cancel: self._ask(client, q, body, self._parse_top_logprobs, done,
                                                             fail, cancel), queries)

    def _parse_top_logprobs(self, response, where: str) -> list[tuple[str, float]]:
        """``choices[0].logprobs.content[0].top_logprobs`` as (token, logprob) pairs."""
        try:
            choice = response.json()["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Fatal(f"malformed chat completion from {where}: {_server_message(response)}") from None
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content or not isinstance(content, list) or not isinstance(content[0], dict):
            raise unsupported_logprobs(f"the server at {self.base_url} (model {self.model})",
                                       "its chat completions carry no logprobs")
        top = content[0].get("top_logprobs") or []
        pairs = [(str(t.get("token", "")), t.get("logprob")) for t in top if isinstance(t, dict)]
        pairs = [(t, float(lp)) for t, lp in pairs if isinstance(lp, (int, float))]
        if not pairs:
            raise unsupported_logprobs(f"the server at {self.base_url} (model {self.model})",
                                       "it returned no top_logprobs")
        return pairs

    def _on_retry(self, query: Query, attempt: int, attempts: int, error: str) -> None:
        """Retries are shown on screen (stderr), at most one line a second, with a running count."""
        with self._client_lock:
            self._retries = getattr(self, "_retries", 0) + 1
            now = time.monotonic()
            if now - getattr(self, "_last_retry_note", -1e9) < 1.0:
                return
            self._last_retry_note = now
            count = self._retries
        print(f"retrying {self.model} (query {query.id}, attempt {attempt + 1}/{attempts}; "
              f"{count} retries so far): {self._scrub(error)}", file=sys.stderr, flush=True)

    @staticmethod
    def _parse(response, where: str) -> tuple[str, int | None]:
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Fatal(f"malformed chat completion from {where}: {_server_message(response)}") from None
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:
            content = message.get("refusal")  # an OpenAI refusal is the model's answer too
        if content is None:
            raise _Fatal(f"no message content in the completion from {where} "
                         f"(finish_reason={choice.get('finish_reason')!r})")
        usage = data.get("usage") or {}
        n_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return str(content), n_tokens if isinstance(n_tokens, int) else None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 2``: Retry-After if given, else backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, max(MAX_RETRY_AFTER, self.backoff_cap))
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": spread out, never ~0

    def _scrub(self, text: str) -> str:
        """Answers and errors may quote what a server echoed back (its request headers, its
        environment): never let the key, URL credentials or a Hugging Face token through."""
        for name in _SECRET_ENV:
            value = os.environ.get(name)
            if value and len(value) >= 8:  # a short value would blank ordinary words
                text = text.replace(value, "***")
        if self._api_key:
            text = text.replace(self._api_key, "***")
        if self._basic_auth:
            user, password = self._basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            for secret in (token, password):
                if secret:
                    text = text.replace(secret, "***")
        return text
