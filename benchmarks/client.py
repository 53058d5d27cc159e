"""Can the `openai:` client keep a GPU server saturated? Requests/s against a server that is never the bottleneck.

A local server on 127.0.0.1 (its own process, asyncio, unlimited parallelism) answers every chat
completion after a fixed delay (default 200 ms), like a GPU server whose batch always has room. The
project's runner (``run_task``: images loaded from disk, sent as base64 PNG, every row appended and
fsynced to ``responses.jsonl``) evaluates the visual alignment task of the offline sample data through
``openai:`` at ``--concurrency 64``. The ideal is concurrency / delay (320 requests/s at 64 and 200 ms);
the last line reads ``client_rps: X`` (target >= 150 on a 2-core machine).

    .venv/bin/python benchmarks/client.py                        # concurrency 64, 200 ms, sample data
    .venv/bin/python benchmarks/client.py --concurrency 128 --batch-size 512
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "No, this image is not safe for viewing on social media."}}],
    "usage": {"prompt_tokens": 600, "completion_tokens": 14, "total_tokens": 614},
}).encode()


def serve(port: int, delay: float, ready) -> None:
    """A minimal HTTP/1.1 server (keep-alive, Content-Length bodies): every POST answered after ``delay``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(REPLY)).encode() + b"\r\n\r\n" + REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class FirstCall:
    """The backend, noting when the runner first hands it queries (after loading the data)."""

    def __init__(self, backend):
        self._backend = backend
        self.first: float | None = None

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def generate(self, queries, config):
        if self.first is None:
            self.first = time.perf_counter()
        return self._backend.generate(queries, config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    from unsafe_concepts.models.registry import load_model
    from unsafe_concepts.runs import RunConfig, run_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256, help="rows handed to the backend at once")
    ap.add_argument("--delay", type=float, default=0.2, help="the server's fixed answer time, seconds")
    ap.add_argument("--limit", type=int, default=None, help="queries (default: the whole sample task)")
    ap.add_argument("--task", default="alignment")
    args = ap.parse_args(argv)

    data = "sample"
    port = free_port()
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(port, args.delay, ready), daemon=True)
    server.start()
    if not ready.wait(30):
        raise SystemExit("the benchmark server did not start")
    out = Path(tempfile.mkdtemp(prefix="client-bench-")) / "run"
    try:
        config = RunConfig(model="openai:bench", task=args.task, data=data, base_url=f"http://127.0.0.1:{port}/v1",
                           concurrency=args.concurrency, batch_size=args.batch_size, limit=args.limit,
                           judge="none", generation={"max_new_tokens": 512, "temperature": 1.0, "top_p": 0.9,
                                                     "do_sample": True, "seed": 0})
        # The backend is loaded (and its worker threads started by a warm-up run) before the clock
        # starts: the number is the sustained rate of a run, not the start-up of the process.
        backend = load_model(config.model, base_url=config.base_url, concurrency=args.concurrency)
        run_task(RunConfig(**{**config.__dict__, "limit": args.concurrency}), out.with_name("warmup"),
                 backend=backend, quiet=True)
        timed = FirstCall(backend)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result = run_task(config, out, backend=timed, quiet=True)
        end = time.perf_counter()
        elapsed, asking = end - t0, end - timed.first
        cpu = time.process_time() - cpu0
        rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines() if line.strip()]
        errors = sum(1 for r in rows if r.get("error"))
        with_image = sum(1 for r in rows if r.get("image"))
        status = result.record.get("status", {})
        print(f"task {args.task} on the sample data | {len(rows)} rows written ({errors} errors, {with_image} with an "
              f"image path), status {status.get('n_rows')}/{status.get('n_samples')} | concurrency {args.concurrency}, "
              f"batch {args.batch_size}, server delay {args.delay * 1000:.0f} ms | {os.cpu_count()} CPUs")
        print(f"whole run {elapsed:.1f} s ({len(rows) / elapsed:.1f} requests/s), of which {elapsed - asking:.1f} s "
              f"loading the task and its data before the first request; asking {asking:.1f} s (images loaded and "
              "encoded, requests, every row appended and fsynced)")
        ideal = args.concurrency / args.delay
        rps = len(rows) / asking
        print(f"ideal {ideal:.0f} requests/s (concurrency / delay): reached {100 * rps / ideal:.0f}%")
        if errors:
            print(f"WARNING: {errors} failed rows, e.g. {next(r['error'] for r in rows if r.get('error'))}")
        # CPU time per request does not depend on how busy the machine is: it bounds what one
        # process can sustain when it gets a whole core (the GIL keeps it to about one).
        print(f"client CPU per request (whole run, all threads): {1000 * cpu / len(rows):.2f} ms -> about "
              f"{len(rows) / cpu:.0f} requests/s per core of CPU this process gets; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs during the run")
        print(f"client_rps: {rps:.1f}  (sustained, while asking)")
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
