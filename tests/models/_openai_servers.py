"""Real HTTP servers on 127.0.0.1 for the OpenAI-compatible backend's tests.

- ``TransformersServer``: `transformers serve` (the OpenAI-compatible server shipped with transformers)
  as a subprocess over the real SmolLM2-135M-Instruct, offline; it can be killed and restarted on the
  same port to test retries across a crash.
- ``ScriptedServer``: a tiny ``http.server`` whose replies a test scripts (429 then 200, 5xx, slow
  replies, echoing headers). It records every request body and the peak number of requests in flight.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class TransformersServer:
    """`transformers serve <local folder>` pinned to one model, on a fixed loopback port."""

    def __init__(self, model_dir: Path, log_path: Path, port: int | None = None):
        self.model_dir = str(model_dir)
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self, ready_timeout: float = 90.0) -> None:
        # One thread: on a shared, oversubscribed CPU, more OpenMP threads make each request slower.
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false")
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", self.model_dir,
               "--host", HOST, "--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"transformers serve not ready after {timeout} s:\n{self.log_tail()}")

    def requests_received(self) -> int:
        return self.log_path.read_text(errors="replace").count("[Request received]")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown, in-flight connections just drop."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # its own session: the group is exactly this server
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that time out or cancel just leave
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class ScriptedServer:
    """A real HTTP server whose reply to the n-th chat request is ``script(n, body, headers)``.

    ``script`` returns ``(status, json_or_text, extra_headers, delay_s)``."""

    def __init__(self, script):
        self.script = script
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    n = len(outer.bodies)
                    outer.bodies.append(json.loads(raw))
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.peak_in_flight = max(outer.peak_in_flight, outer.in_flight)
                try:
                    status, reply, extra, delay = outer.script(n, outer.bodies[n], dict(self.headers))
                    if delay:
                        time.sleep(delay)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1
                data = (json.dumps(reply) if not isinstance(reply, str) else reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = _QuietServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def completion(text: str, completion_tokens: int = 3) -> dict:
    """A chat-completion body as OpenAI-compatible servers return it."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens},
    }
