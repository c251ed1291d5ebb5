"""Benchmark: what capture costs and what it keeps. The proxy beside calling the upstream directly, and the traces
left after the proxy is killed with SIGKILL mid-burst, measured in one run.

    .venv/bin/python benchmarks/capture_load.py                       # 400 requests per level, 1 and 8 clients
    .venv/bin/python benchmarks/capture_load.py --requests 1000 --clients 1 8 32 --json out.json

Three processes on loopback, driven by the real ``openai`` client from threads of this one:

- ``upstream``: a plain FastAPI app answering chat completions at once (a fixed answer with a fresh id, or a
  five-chunk stream), so what is measured is the proxy and not a model;
- ``direct``: the client calls the upstream;
- ``proxy``: the client calls ``instil serve --proxy`` (the real command, a spec whose ``serve.upstream`` is the
  upstream), which forwards, relays and captures every answer as a trace (spooled, then stored in SQLite).

The kill: while 8 clients send requests through a fresh proxy, it is killed with SIGKILL; every answer a client got
with a 200 must then be in the store exactly once after the next start (which replays the dead proxy's spool), and
nothing else. Reported: the 200s, the traces, how many of the 200s have no trace (lost), and repeated ids.
"""

# No `from __future__ import annotations`: FastAPI reads the upstream handler's annotations.

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve()


def upstream_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):

            def events():
                head = {"id": rid, "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
                for piece in ["bill", "ing"]:
                    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
                done = {"index": 0, "delta": {}, "finish_reason": "stop"}
                yield f"data: {json.dumps({**head, 'choices': [done]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {
            "id": rid,
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "billing"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
        }

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {what} did not start")


def start_upstream() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE), "--upstream", "--port", str(port)])
    wait_listening(proc, port, "upstream")
    return proc, f"http://127.0.0.1:{port}/v1"


def start_proxy(folder: Path, upstream: str) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "billing"}]}) + "\n"
    )
    (folder / "instil.yaml").write_text(
        "name: bench\nsystem_prompt: Triage.\n"
        "graders: [{name: short, type: length, max_chars: 40, primary: true}]\n"
        f"data: [{{path: data.jsonl}}]\nserve:\n  upstream: {{name: team, base_url: '{upstream}'}}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "instil.cli", "serve", str(folder / "instil.yaml"), "--proxy", "--port", str(port)],
        env={**os.environ, "INSTIL_HOME": str(folder / "home")},
        stdout=subprocess.DEVNULL,
    )
    wait_listening(proc, port, "proxy")
    return proc, f"http://127.0.0.1:{port}/v1"


def one(client, stream: bool) -> tuple[float, str]:
    messages = [{"role": "system", "content": "Triage the ticket."}, {"role": "user", "content": "I was billed twice"}]
    began = time.perf_counter()
    if stream:
        rid = ""
        for chunk in client.chat.completions.create(model="gpt-team", messages=messages, stream=True):
            rid = chunk.id
    else:
        rid = client.chat.completions.create(model="gpt-team", messages=messages).id
    return time.perf_counter() - began, rid


def drive(url: str, clients: int, requests: int, stream: bool) -> dict:
    import openai

    pool = [openai.OpenAI(base_url=url, api_key="sk-none", max_retries=0) for _ in range(clients)]
    for c in pool:
        one(c, stream)  # warm: connections open
    latencies: list[float] = []
    lock = threading.Lock()
    left = [requests]

    def worker(c) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            took, _ = one(c, stream)
            with lock:
                latencies.append(took)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(worker, pool))
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }


def kill_test(upstream: str, folder: Path, seconds: float) -> dict:
    """8 clients through a fresh proxy, SIGKILL after ``seconds``; then the next start's replay, counted."""
    import openai

    proc, url = start_proxy(folder, upstream)
    ok: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        c = openai.OpenAI(base_url=url, api_key="sk-none", max_retries=0, timeout=5)
        while not stop.is_set():
            try:
                _, rid = one(c, stream=False)
            except openai.APIError:  # the proxy is gone: this request got no 200
                continue
            with lock:
                ok.append(rid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()

    from instil.serve.capture import TraceLog
    from instil.store import Store

    with Store.open(home=folder / "home") as store:
        stored_at_kill = store.count_traces()
        log = TraceLog(store).start()  # what the next `instil serve` does first
        deadline = time.time() + 60
        while log.stats().spool_bytes and time.time() < deadline:
            time.sleep(0.05)
        log.close()
        ids = [t.id for t in store.list_traces(limit=None)]
    kept = set(ids)
    return {
        "ok_200": len(ok),
        "stored_at_kill": stored_at_kill,
        "traces": len(ids),
        "lost": len(set(ok) - kept),
        "duplicated": len(ids) - len(kept),
        "extra": len(kept - set(ok)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=400, help="requests per level (default 400)")
    p.add_argument("--kill-after", type=float, default=2.0, help="seconds of load before the SIGKILL (default 2)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream:
        import uvicorn

        uvicorn.run(upstream_app(), host="127.0.0.1", port=args.port, log_level="warning")
        return

    from rich.console import Console
    from rich.table import Table

    import instil

    console = Console()
    rows = []
    upstream, up_url = start_upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proxy, proxy_url = start_proxy(Path(tmp) / "load", up_url)
            try:
                for stream in (False, True):
                    for c in args.clients:
                        for name, url in (("direct", up_url), ("proxy", proxy_url)):
                            r = drive(url, c, args.requests, stream)
                            rows.append({"path": name, "stream": stream, "clients": c, **r})
                            console.print(f"{name} stream={stream} x{c}: p50 {r['p50_ms']:.2f} ms")
            finally:
                proxy.send_signal(signal.SIGINT)
                proxy.wait(30)
            killed = kill_test(up_url, Path(tmp) / "kill", args.kill_after)
    finally:
        upstream.terminate()
        upstream.wait(30)

    table = Table(title=f"the proxy beside calling the upstream directly, instil {instil.__version__}")
    for col in ["path", "stream", "clients", "requests", "req/s", "p50 ms", "p99 ms", "p50 added ms"]:
        table.add_column(col, justify="left" if col == "path" else "right")
    direct = {(r["stream"], r["clients"]): r["p50_ms"] for r in rows if r["path"] == "direct"}
    for r in rows:
        added = r["p50_ms"] - direct[(r["stream"], r["clients"])] if r["path"] == "proxy" else None
        table.add_row(
            r["path"],
            "yes" if r["stream"] else "no",
            str(r["clients"]),
            str(r["requests"]),
            f"{r['requests_per_s']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{added:+.2f}" if added is not None else "-",
        )
    console.print(table)
    kill = Table(title=f"8 clients through the proxy, SIGKILL after {args.kill_after:g} s, then the next start")
    for col in ["200s", "stored at the kill", "traces after replay", "lost", "duplicated", "without a 200"]:
        kill.add_column(col, justify="right")
    kill.add_row(*(str(killed[k]) for k in ("ok_200", "stored_at_kill", "traces", "lost", "duplicated", "extra")))
    console.print(kill)
    if args.json:
        args.json.write_text(json.dumps({"proxy": rows, "kill": killed}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
