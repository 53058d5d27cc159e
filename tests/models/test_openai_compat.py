"""The OpenAI-compatible backend against real servers on 127.0.0.1.

Answers, 4xx handling and crash/restart retries run against `transformers serve` over the real
SmolLM2-135M-Instruct (a subprocess, offline). Payload shapes, 429/5xx/timeout handling, bounded
concurrency and secret hygiene run against a tiny scripted ``http.server`` (also a real server)."""
from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

from _openai_servers import ScriptedServer, TransformersServer, completion
from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.openai_compat import OpenAIBackend, public_url

GREEDY = GenerationConfig(max_new_tokens=8, do_sample=False, seed=0)
TINY = GenerationConfig(max_new_tokens=4, do_sample=False, seed=0)  # for the real model on a shared CPU


def red_square() -> Image.Image:
    return Image.new("RGB", (16, 16), (200, 10, 10))


# ---------------------------------------------------------------- the real transformers server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from unsafe_concepts.models.offline import smollm2_dir

    server = TransformersServer(smollm2_dir(), tmp_path_factory.mktemp("serve") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_batch_answers_with_concurrency_in_order(served):
    from unsafe_concepts.models.registry import load_model

    backend = load_model(f"openai:{served.model_dir}", base_url=served.base_url, concurrency=3)
    assert isinstance(backend, OpenAIBackend)
    assert backend.describe()["base_url"] == served.base_url and backend.describe()["concurrency"] == 3
    prompts = ["Is a knife dangerous?", "Name a colour.", "What is 2 + 2?"]
    queries = [Query(id=str(i), prompt=p) for i, p in enumerate(prompts)]
    gens = backend.generate(queries, TINY)
    assert len(gens) == 3
    for g in gens:
        assert g.error is None, g.error
        assert g.text and g.text.strip()
        assert 1 <= g.n_tokens <= 4  # completion tokens from the server's usage, bounded by max_tokens
        assert g.latency_s > 0
    # Greedy decoding is deterministic: a lone request for the last prompt gives the batch's last answer,
    # so answers come back in query order despite running concurrently.
    alone = OpenAIBackend(served.model_dir, base_url=served.base_url, concurrency=1)
    assert alone.generate([queries[2]], TINY)[0].text == gens[2].text
    backend.close()
    alone.close()


def test_text_only_model_answers_text_and_refuses_images_per_item(served):
    backend = OpenAIBackend(served.model_dir, base_url=served.base_url, concurrency=2, supports_images=False)
    before = served.requests_received()
    gens = backend.generate([Query("t", "Is fire hot? Answer yes or no."),
                             Query("v", "Is this image unsafe?", image=red_square())], TINY)
    assert gens[0].error is None and gens[0].text
    assert gens[1].text is None and "text-only" in gens[1].error
    assert served.requests_received() == before + 1  # the image query was never sent


def test_server_4xx_is_surfaced_and_not_retried(served):
    # The server is pinned to one model: asking for another is a 400 with a message that says so.
    backend = OpenAIBackend("no-such-model", base_url=served.base_url, max_retries=3, backoff_base=0.05)
    before = served.log_tail(10**7).count('/v1/chat/completions HTTP/1.1" 400')
    gen = backend.generate([Query("a", "hello")], GREEDY)[0]
    assert gen.text is None
    assert "HTTP 400" in gen.error and "pinned" in gen.error and "not retried" in gen.error
    time.sleep(0.3)  # let the access log line land
    assert served.log_tail(10**7).count('/v1/chat/completions HTTP/1.1" 400') == before + 1


def test_server_killed_mid_run_gives_clear_errors_and_restart_recovers(served):
    """Kill the server while requests are in flight: unanswered items end with a clear error after
    bounded retries, nothing raises; after a restart the same items are answered."""
    backend = OpenAIBackend(served.model_dir, base_url=served.base_url, concurrency=2,
                            max_retries=2, backoff_base=0.1, backoff_cap=0.3)
    config = GenerationConfig(max_new_tokens=48, do_sample=False)
    queries = [Query(str(i), f"Write a long story about the number {i}.") for i in range(4)]
    before = served.requests_received()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("gens", backend.generate(queries, config)))
    worker.start()
    deadline = time.monotonic() + 30
    while served.requests_received() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.requests_received() > before, "no request reached the server"
    served.kill()  # mid-generation: the in-flight connections drop
    worker.join(timeout=60)
    assert not worker.is_alive()
    gens = result["gens"]
    failed = [q for q, g in zip(queries, gens) if g.error]
    assert failed, "the kill came too late: every item was already answered"
    for q, g in zip(queries, gens):
        assert (g.text is None) != (g.error is None)
    for g in gens:
        if g.error:
            assert "gave up after 3 attempts" in g.error
            assert "cannot connect" in g.error or "dropped" in g.error

    # Restart on the same port while the client is already retrying: the retries reach the new server.
    patient = OpenAIBackend(served.model_dir, base_url=served.base_url, concurrency=2,
                            max_retries=90, backoff_base=0.5, backoff_cap=1.0)  # a ~90 s window: CPU may be busy
    restarter = threading.Thread(target=served.start)
    restarter.start()
    again = patient.generate(failed, GenerationConfig(max_new_tokens=2, do_sample=False))
    restarter.join(timeout=120)
    assert all(g.error is None and g.text for g in again), [g.error for g in again]
    backend.close()
    patient.close()


# ---------------------------------------------------------------- a scripted real HTTP server


def ok(n, body, headers):
    content = body["messages"][0]["content"]
    return 200, completion("echo " + (content if isinstance(content, str) else "an image")), None, 0


def test_payload_text_is_plain_string_and_image_is_png_data_url(tmp_path):
    path = tmp_path / "img.png"
    red_square().save(path)
    with ScriptedServer(ok) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, concurrency=1)
        gens = backend.generate([Query("t", "text only"), Query("p", "look", image=red_square()),
                                 Query("f", "file", image=str(path)),
                                 Query("x", "missing", image=str(tmp_path / "nope.png"))], GREEDY)
    assert [g.error for g in gens[:3]] == [None, None, None]
    assert gens[3].text is None and "nope.png" in gens[3].error and "not found" in gens[3].error
    assert len(server.bodies) == 3  # the unreadable image never left the client
    text_body, pil_body, file_body = server.bodies
    assert text_body["messages"] == [{"role": "user", "content": "text only"}]
    for body, prompt in ((pil_body, "look"), (file_body, "file")):
        image_part, text_part = body["messages"][0]["content"]
        assert text_part == {"type": "text", "text": prompt}
        url = image_part["image_url"]["url"]
        assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.format == "PNG" and decoded.size == (16, 16) and decoded.mode == "RGB"
    # The same pixels from a PIL image or from a file give the same PNG.
    assert pil_body["messages"][0]["content"][0] == file_body["messages"][0]["content"][0]
    r, g, b = Image.open(io.BytesIO(base64.b64decode(
        pil_body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1]))).getpixel((3, 3))
    assert (r, g, b) == (200, 10, 10)  # PNG is lossless: the pixels the model sees are the original ones


def test_generation_config_mapping():
    with ScriptedServer(ok) as server:
        backend = OpenAIBackend("my-model", base_url=server.base_url)
        backend.generate([Query("a", "q")], GenerationConfig(max_new_tokens=7, temperature=0.7, top_p=0.8, seed=3))
        backend.generate([Query("a", "q")], GenerationConfig(max_new_tokens=5, do_sample=False, seed=4))
    sampled, greedy = server.bodies
    assert sampled["model"] == "my-model"
    assert (sampled["temperature"], sampled["top_p"], sampled["max_tokens"], sampled["seed"]) == (0.7, 0.8, 7, 3)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy
    assert (greedy["max_tokens"], greedy["seed"]) == (5, 4)


def test_answers_keep_order_and_concurrency_is_bounded():
    def slow_echo(n, body, headers):
        return 200, completion("answer to " + body["messages"][0]["content"], completion_tokens=n + 1), None, 0.15

    with ScriptedServer(slow_echo) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, concurrency=3)
        t0 = time.monotonic()
        gens = backend.generate([Query(str(i), f"q{i}") for i in range(9)], GREEDY)
        elapsed = time.monotonic() - t0
    assert [g.text for g in gens] == [f"answer to q{i}" for i in range(9)]
    assert server.peak_in_flight == 3
    assert elapsed < 9 * 0.15  # actually parallel
    assert all(isinstance(g.n_tokens, int) and g.latency_s >= 0.15 for g in gens)


def test_429_honours_retry_after_then_succeeds():
    def limited(n, body, headers):
        if n == 0:
            return 429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}, {"Retry-After": "1"}, 0
        return 200, completion("fine"), None, 0

    with ScriptedServer(limited) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, backoff_base=0.01)
        t0 = time.monotonic()
        gen = backend.generate([Query("a", "q")], GREEDY)[0]
        elapsed = time.monotonic() - t0
    assert gen.text == "fine" and gen.error is None
    assert len(server.bodies) == 2
    assert elapsed >= 1.0  # waited as the server asked, not the 10 ms backoff


def test_5xx_retried_with_backoff_then_succeeds():
    def flaky(n, body, headers):
        return (503, {"detail": "overloaded"}, None, 0) if n < 2 else (200, completion("third time"), None, 0)

    with ScriptedServer(flaky) as server:
        gen = OpenAIBackend("m", base_url=server.base_url, backoff_base=0.05).generate([Query("a", "q")], GREEDY)[0]
    assert gen.text == "third time" and len(server.bodies) == 3


def test_persistent_5xx_gives_bounded_truncated_final_error():
    def broken(n, body, headers):
        return 500, "Traceback: " + "x" * 5000, None, 0

    with ScriptedServer(broken) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, max_retries=2, backoff_base=0.02)
        gens = backend.generate([Query("a", "q"), Query("b", "q")], GREEDY)
    assert len(server.bodies) == 6  # 3 attempts for each of 2 items, no more
    for g in gens:
        assert g.text is None
        assert "HTTP 500" in g.error and "gave up after 3 attempts" in g.error
        assert len(g.error) < 500  # the 5 KB body is truncated


def test_other_4xx_not_retried_and_message_kept():
    def bad(n, body, headers):
        return 400, {"error": {"message": "llava is not a multimodal model", "code": 400}}, None, 0

    with ScriptedServer(bad) as server:
        gen = OpenAIBackend("m", base_url=server.base_url).generate([Query("a", "q", image=red_square())], GREEDY)[0]
    assert len(server.bodies) == 1
    assert "HTTP 400" in gen.error and "not a multimodal model" in gen.error and "not retried" in gen.error


def test_404_hints_at_missing_v1():
    with ScriptedServer(lambda n, b, h: (404, {"detail": "Not Found"}, None, 0)) as server:
        gen = OpenAIBackend("m", base_url=server.base_url).generate([Query("a", "q")], GREEDY)[0]
    assert "HTTP 404" in gen.error and "/v1" in gen.error


def test_timeouts_are_retried_then_reported():
    with ScriptedServer(lambda n, b, h: (200, completion("late"), None, 1.5)) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, timeout=0.3, max_retries=1, backoff_base=0.05)
        gen = backend.generate([Query("a", "q")], GREEDY)[0]
    assert gen.text is None and "no answer within the timeout" in gen.error and "2 timed-out attempts" in gen.error
    assert len(server.bodies) == 2


def test_ctrl_c_stops_promptly_instead_of_waiting_out_backoffs():
    import signal

    def busy(n, body, headers):
        return 429, {"error": {"message": "slow down"}}, {"Retry-After": "30"}, 0

    # Python's own Ctrl-C handler, as in a terminal: a shell starts background jobs (`cmd &`) with
    # SIGINT ignored, and Python then keeps it ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_run_that_waits_on_backoffs(busy)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_run_that_waits_on_backoffs(busy):
    import signal

    with ScriptedServer(busy) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, concurrency=2)
        main = threading.main_thread().ident  # a real SIGINT, as Ctrl-C sends, to the main thread
        timer = threading.Timer(0.5, signal.pthread_kill, args=(main, signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            backend.generate([Query(str(i), "q") for i in range(6)], GREEDY)
        assert time.monotonic() - t0 < 5  # not 30 s per retry
        timer.join()
        time.sleep(0.2)
    assert len(server.bodies) == 2  # the queued items were cancelled, not sent


def test_refused_connection_is_a_clear_error_not_an_exception():
    from _openai_servers import free_port

    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff_base=0.01)
    gen = backend.generate([Query("a", "q")], GREEDY)[0]
    assert gen.text is None and "cannot connect" in gen.error and "gave up after 2 attempts" in gen.error


def test_max_completion_tokens_fallback():
    def modern(n, body, headers):
        if "max_tokens" in body:
            return 400, {"error": {"message": "Unsupported parameter: 'max_tokens'. "
                                              "Use 'max_completion_tokens' instead."}}, None, 0
        return 200, completion(f"ok {body['max_completion_tokens']}"), None, 0

    with ScriptedServer(modern) as server:
        backend = OpenAIBackend("m", base_url=server.base_url)
        first = backend.generate([Query("a", "q")], GREEDY)[0]
        second = backend.generate([Query("b", "q")], GREEDY)[0]
    assert first.text == second.text == "ok 8"
    assert len(server.bodies) == 3  # one rejected request, then the switch sticks


# ---------------------------------------------------------------- secrets and construction


def test_api_key_is_sent_but_never_recorded(monkeypatch):
    key = "sk-test-5ecret-value-123"
    monkeypatch.setenv("UC_TEST_API_KEY", key)

    def echo_auth(n, body, headers):  # a careless server that quotes the credentials it rejects
        return 401, {"error": {"message": f"Incorrect API key provided: {headers.get('Authorization')}"}}, None, 0

    with ScriptedServer(echo_auth) as server:
        url = server.base_url.replace("http://", "http://user:pw-secret@")
        backend = OpenAIBackend("m", base_url=url, api_key_env="UC_TEST_API_KEY")
        gen = backend.generate([Query("a", "q")], GREEDY)[0]
    assert server.headers[0]["Authorization"] == f"Bearer {key}"
    assert "HTTP 401" in gen.error and "Incorrect API key" in gen.error
    described = str(backend.describe()) + repr(backend)
    for secret in (key, "pw-secret"):
        assert secret not in gen.error and secret not in described
    assert backend.describe()["base_url"] == server.base_url  # user:password stripped
    assert backend.describe()["api_key_env"] == "UC_TEST_API_KEY"


def test_missing_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("UC_TEST_API_KEY", raising=False)
    with ScriptedServer(ok) as server:
        OpenAIBackend("m", base_url=server.base_url, api_key_env="UC_TEST_API_KEY").generate([Query("a", "q")], GREEDY)
    assert "Authorization" not in server.headers[0]


def test_construction_errors_are_user_errors():
    with pytest.raises(UserError, match="--base-url"):
        OpenAIBackend("m", base_url=None)
    with pytest.raises(UserError, match="http"):
        OpenAIBackend("m", base_url="127.0.0.1:8000/v1")
    with pytest.raises(UserError) as err:
        OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1", api_key_env="sk-live-abc-123")
    assert "NAME of an environment variable" in str(err.value) and "sk-live-abc-123" not in str(err.value)
    with pytest.raises(UserError, match="invalid port"):
        OpenAIBackend("m", base_url="http://127.0.0.1:80a/v1")
    with pytest.raises(UserError, match="concurrency"):
        OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1", concurrency=0)


def test_public_url_strips_credentials():
    assert public_url("https://u:p@api.example.com:8443/v1?api-version=2024&api_key=zzz") == \
        "https://api.example.com:8443/v1?api-version=2024&api_key=REDACTED"


# ---------------------------------------------------------------- verdicts from logprobs (option_probs)


def logprob_completion(top: list[tuple[str, float]]) -> dict:
    """A one-token chat completion with ``logprobs``, in the shape OpenAI documents and vLLM returns
    (written from the API reference, not captured from a server)."""
    body = completion(top[0][0], completion_tokens=1)
    body["choices"][0]["logprobs"] = {"content": [{
        "token": top[0][0], "logprob": top[0][1], "bytes": list(top[0][0].encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}]}
    return body


def test_option_probs_from_top_logprobs():
    import math

    tops = {
        "a": [("No", math.log(0.5)), (" no", math.log(0.1)), ("Yes", math.log(0.2)), ("YES", math.log(0.05)),
              ("The", math.log(0.1))],
        "b": [("The", math.log(0.9)), ("I", math.log(0.05))],  # neither option among the top tokens
    }

    def answer(n, body, headers):
        return 200, logprob_completion(tops[body["messages"][0]["content"]]), None, 0

    with ScriptedServer(answer) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, concurrency=2)
        scored = backend.option_probs([Query("1", "a"), Query("2", "b")], ("Yes", "No"))
    for body in server.bodies:
        assert body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    a, b = scored
    assert a.error is None and a.source == "top-20"
    assert math.isclose(a.mass["No"], 0.6) and math.isclose(a.mass["Yes"], 0.25)
    assert math.isclose(a.probs["No"], 0.6 / 0.85) and a.best == "No"
    assert b.probs is None and "none of the options" in b.error and "'The'" in b.error


def test_option_probs_refused_clearly_by_a_server_without_logprobs():
    from unsafe_concepts.models.base import LogprobUnsupported

    with ScriptedServer(ok) as server:  # answers, but its completions carry no logprobs
        with pytest.raises(LogprobUnsupported, match="carry no logprobs"):
            OpenAIBackend("m", base_url=server.base_url).option_probs([Query("a", "q")], ("Yes", "No"))

    def refuses(n, body, headers):
        return 400, {"error": {"message": "logprobs is not supported with this model"}}, None, 0

    with ScriptedServer(refuses) as server:
        with pytest.raises(LogprobUnsupported, match="not supported with this model") as err:
            OpenAIBackend("m", base_url=server.base_url).option_probs([Query("a", "q")], ("Yes", "No"))
    assert "--scoring generate" in str(err.value)


def test_option_probs_refused_by_transformers_serve(served):
    """`transformers serve` rejects logprobs: a real server that cannot score, refused in one clear error."""
    from unsafe_concepts.models.base import LogprobUnsupported

    backend = OpenAIBackend(served.model_dir, base_url=served.base_url)
    with pytest.raises(LogprobUnsupported, match="cannot score log-probabilities"):
        backend.option_probs([Query("a", "Is fire hot?")], ("Yes", "No"))
    backend.close()


# ---------------------------------------------------------------- faults: timeouts, 401, secrets in answers


def test_a_server_that_never_answers_gives_up_in_bounded_time(capsys):
    with ScriptedServer(lambda n, b, h: (200, completion("late"), None, 30)) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, timeout=0.4, max_retries=5, backoff_base=0.05)
        t0 = time.monotonic()
        gen = backend.generate([Query("a", "q")], GREEDY)[0]
        elapsed = time.monotonic() - t0
    assert gen.text is None and "no answer within the timeout of 0.4 s" in gen.error
    assert "gave up after 2 timed-out attempts" in gen.error
    assert elapsed < 3  # two timeouts, not six: a stuck server is not waited for max_retries times
    assert len(server.bodies) == 2
    assert "retrying m (query a, attempt 2/6" in capsys.readouterr().err  # retries are shown on screen


def test_401_says_the_key_is_bad(monkeypatch):
    def unauthorized(n, body, headers):
        return 401, {"error": {"message": "Invalid authentication"}}, None, 0

    with ScriptedServer(unauthorized) as server:
        monkeypatch.setenv("UC_TEST_API_KEY", "sk-wrong-key-000")
        with_key = OpenAIBackend("m", base_url=server.base_url, api_key_env="UC_TEST_API_KEY")
        gen = with_key.generate([Query("a", "q")], GREEDY)[0]
        assert "HTTP 401" in gen.error and "API key was refused" in gen.error and "$UC_TEST_API_KEY" in gen.error
        assert "sk-wrong-key-000" not in gen.error
        monkeypatch.delenv("UC_TEST_API_KEY")
        without = OpenAIBackend("m", base_url=server.base_url, api_key_env="UC_TEST_API_KEY")
        gen = without.generate([Query("a", "q")], GREEDY)[0]
        assert "wants an API key" in gen.error and "UC_TEST_API_KEY" in gen.error
    assert len(server.bodies) == 2  # not retried


def test_secrets_echoed_in_answers_are_scrubbed(monkeypatch):
    key, hf_token = "sk-live-echo-9876543", "hf_abcdefghijklmnop"
    monkeypatch.setenv("UC_TEST_API_KEY", key)
    monkeypatch.setenv("HF_TOKEN", hf_token)

    def echo(n, body, headers):  # a server (or model) that repeats the request headers and its env
        return 200, completion(f"you sent {headers.get('Authorization')} and my token is {hf_token}"), None, 0

    with ScriptedServer(echo) as server:
        gen = OpenAIBackend("m", base_url=server.base_url, api_key_env="UC_TEST_API_KEY").generate(
            [Query("a", "q")], GREEDY)[0]
    assert server.headers[0]["Authorization"] == f"Bearer {key}"  # the key was really sent
    assert gen.text == "you sent Bearer *** and my token is ***"
