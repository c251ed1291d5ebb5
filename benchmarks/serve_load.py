"""Benchmark: `instil serve`'s app under concurrent clients, beside a naive server, measured in one run.

    .venv/bin/python benchmarks/serve_load.py                        # 1, 8 and 32 clients, 64 requests each
    .venv/bin/python benchmarks/serve_load.py --clients 1 8 --requests 32 --max-tokens 24 --json out.json

Both servers run the same model in their own process (uvicorn on loopback) and are driven by the real ``openai``
client from threads of this one, streaming, so time to first token is measured as a client sees it:

- ``instil``: :func:`instil.serve.create_app`, what ``instil serve`` runs;
- ``instil+traces``: the same with every answer captured as a trace (spooled, graded, stored in SQLite), as
  ``instil serve`` runs by default; its latency beside ``instil`` is what trace logging costs;
- ``naive``: one ``model.generate`` per request under a lock (no batching), the plain way to put a model behind
  FastAPI.

Each server process gets the torch threads ``instil serve`` sets (:func:`instil.serve.engine.serving_threads`: on a
CPU every core but one, so the HTTP side has a core of its own), the naive one too.

The proxy's overhead and the traces kept through a SIGKILL are measured by ``benchmarks/capture_load.py``.

The model is the ``tiny`` preset (``build_tiny`` on the triage example's golden and traffic sets), its weights drawn
with a larger spread so that answers vary; the prompts are the triage holdout's tickets with the job's short prompt,
greedy, ``--max-tokens`` at most. Each level sends ``--requests`` requests (or stops at ``--time-limit`` seconds) and
reports requests/s, generated tokens/s, and time to first token and total latency at p50 and p99.
"""

# No `from __future__ import annotations`: FastAPI reads the naive handler's annotations.

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve()


# ---- the servers (each in its own process) ---------------------------------------------------------------------------
def serve(kind: str, model_dir: Path | None, spec_path: Path | None, port: int, system_prompt: str) -> None:
    import torch
    import uvicorn

    if spec_path is not None:  # the job's served model, loaded as `instil serve` loads it
        from instil.env import home_dir
        from instil.serve import load_served
        from instil.spec import load_spec
        from instil.store import Store

        spec = load_spec(spec_path)
        served = load_served(spec, Store.open(home=home_dir(spec.root)))
        model, tokenizer, renderer = served.model, served.tokenizer, served.renderer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from instil.train.chat import ChatRenderer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        renderer = ChatRenderer(tokenizer)
    torch.set_grad_enabled(False)
    # Every server gets the torch threads `instil serve` sets (on a CPU, every core but one): the same for all.
    from instil.serve.engine import serving_threads

    serving_threads(model)
    if kind in ("instil", "instil+traces"):
        from instil.serve import create_app

        hook = None
        if kind == "instil+traces":  # every answer spooled and stored, as `instil serve` does by default
            from instil.serve.capture import TraceLog, served_trace
            from instil.store import Store

            traces = TraceLog(Store.open(home=tempfile.mkdtemp(prefix="instil-bench-"))).start()

            def hook(r):
                traces.capture(served_trace("bench", r))

        app = create_app(
            model, tokenizer, renderer, model_name="tiny", default_system_prompt=system_prompt, on_request=hook
        )
    else:
        app = naive_app(model, tokenizer, renderer)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def naive_app(model, tokenizer, renderer):
    """One ``generate`` per request, one at a time: what a first FastAPI wrapper around a model does."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import run_in_threadpool

    from instil.data.records import Example, Message
    from instil.eval.generate import stop_token_ids

    app = FastAPI()
    lock = threading.Lock()
    stops = stop_token_ids(tokenizer, renderer, model)

    def answer(messages: list[dict], max_tokens: int) -> tuple[str, int, int]:
        example = Example([*(Message(m["role"], m["content"]) for m in messages), Message("assistant", "")])
        ids = tokenizer(renderer.prompt(example), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with lock, torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
            )
        new = [t for t in out[0, ids.shape[1] :].tolist() if t not in stops]
        return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text, n_in, n_out = await run_in_threadpool(answer, body["messages"], body.get("max_tokens") or 32)
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "tiny",
                "choices": [choice],
                "usage": usage,
            }

        def events():
            base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "tiny"}
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'content': text}}]})}\n\n"
            done = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield f"data: {json.dumps({**base, 'choices': [done], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0, "owned_by": "naive"}]}

    return app


# ---- the clients -----------------------------------------------------------------------------------------------------
def one_request(
    client, model: str, system: str, ticket: str, max_tokens: int, stream: bool
) -> tuple[float, float, int]:
    """(time to first token, total seconds, completion tokens) of one request (TTFT = total when not streamed)."""
    began = time.perf_counter()
    first, tokens = None, 0
    if not stream:
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": ticket}],
            max_tokens=max_tokens or None,
        )
        total = time.perf_counter() - began
        return total, total, answer.usage.completion_tokens
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": ticket}],
        max_tokens=max_tokens or None,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - began
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - began
    return (first if first is not None else total), total, tokens


def load(
    base_url: str,
    system: str,
    tickets: list[str],
    clients: int,
    n: int,
    max_tokens: int,
    time_limit: float,
    stream: bool,
) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    results: list[tuple[float, float, int]] = []
    lock, stop_at = threading.Lock(), time.perf_counter() + time_limit
    counter = iter(range(n))
    model = client.models.list().data[0].id

    def worker() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            r = one_request(client, model, system, tickets[k % len(tickets)], max_tokens, stream)
            with lock:
                results.append(r)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - began
    ttft, total = sorted(r[0] for r in results), sorted(r[1] for r in results)
    return {
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": quantile(ttft, 0.99),
        "total_p50": statistics.median(total),
        "total_p99": quantile(total, 0.99),
    }


def hostile(base_url: str, system: str, tickets: list[str], big_chars: int) -> dict:
    """A small request's latency alone, sent 0.2 s after a ``big_chars``-character one, and right after eight
    clients sent a long request each and hung up."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def small() -> float:
        began = time.perf_counter()
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": tickets[0]}], max_tokens=8, temperature=0
        )
        return time.perf_counter() - began

    alone = statistics.median(small() for _ in range(5))
    big_result: dict = {}

    def big() -> None:
        began = time.perf_counter()
        text = ("lorem ipsum dolor sit amet " * (big_chars // 27 + 1))[:big_chars]
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
            big_result["status"] = 200
        except openai.APIStatusError as e:
            big_result["status"] = e.status_code
        except openai.APIConnectionError:
            big_result["status"] = "no answer"
        big_result["seconds"] = time.perf_counter() - began

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.2)
    beside = small()
    thread.join()

    port = int(base_url.split(":")[2].split("/")[0])
    for k in range(8):
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": tickets[k]}], "max_tokens": 256}
        ).encode()
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.2)
    after_hangups = small()
    return {
        "small_alone_s": alone,
        "small_beside_big_s": beside,
        "big_status": big_result.get("status"),
        "big_s": big_result.get("seconds"),
        "small_after_8_hangups_s": after_hangups,
    }


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: list[str], system_prompt: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, str(HERE), "--serve", kind, *model, "--port", str(port)]
    proc = subprocess.Popen(
        [*args, "--system-prompt", system_prompt], env={**os.environ, "TOKENIZERS_PARALLELISM": "0"}
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {kind} server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start in 120 s")


def build_model(folder: Path) -> tuple[list[str], str, str]:
    """The tiny model (weights spread) in ``folder``; returns the holdout tickets, the short and the full prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from instil.data.records import Example
    from instil.examples.triage.generate import SPEC_PATH, generate
    from instil.spec import load_spec
    from instil.train.tiny import build_tiny

    data = folder / "data"
    generate(data)
    spec = load_spec(SPEC_PATH)
    examples = []
    for name in ("golden.jsonl", "traffic.jsonl"):
        with (data / name).open(encoding="utf-8") as f:
            examples += [Example.from_dict(json.loads(line)) for line in f if line.strip()]
    model_dir = build_tiny(examples, folder / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(model_dir, safe_serialization=True)
    with (data / "holdout.jsonl").open(encoding="utf-8") as f:
        holdout = [Example.from_dict(json.loads(line)) for line in f if line.strip()]
    tickets = [next(m.content for m in ex.messages if m.role == "user") for ex in holdout]
    return tickets, spec.short_prompt, spec.system_prompt


def job_prompts(spec_path: Path) -> tuple[list[str], str, str]:
    """The job's holdout tickets (its last user message), short prompt and full prompt."""
    from instil.data.records import Example
    from instil.spec import load_spec

    spec = load_spec(spec_path)
    holdout = next(d for d in spec.data if d.role == "holdout")
    with spec.resolve(holdout.path).open(encoding="utf-8") as f:
        examples = [Example.from_dict(json.loads(line)) for line in f if line.strip()]
    tickets = [[m.content for m in ex.messages if m.role == "user"][-1] for ex in examples]
    return tickets, spec.short_prompt or spec.system_prompt, spec.system_prompt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64, help="requests per level (default 64)")
    p.add_argument("--max-tokens", type=int, default=32, help="0: leave max_tokens out (the server's default)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most (default 120)")
    p.add_argument(
        "--servers",
        nargs="+",
        default=["naive", "instil", "instil+traces"],
        choices=["naive", "instil", "instil+traces"],
    )
    p.add_argument("--prompt", choices=["short", "full"], default="short", help="the job's short or full prompt")
    p.add_argument("--spec", type=Path, help="serve this job's model (as `instil serve` does) and send its holdout")
    p.add_argument("--no-stream", action="store_true", help="plain requests (time to first token is then the total)")
    p.add_argument(
        "--hostile-chars", type=int, default=120_000, help="the big request's characters in the hostile table"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--serve", choices=["naive", "instil", "instil+traces"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--system-prompt", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.model_dir, args.spec, args.port, args.system_prompt)
        return

    from rich.console import Console
    from rich.table import Table

    import instil

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        if args.spec is not None:
            tickets, short, full = job_prompts(args.spec)
            model = ["--spec", str(args.spec.resolve())]
        else:
            tickets, short, full = build_model(Path(tmp))
            model = ["--model-dir", str(Path(tmp) / "model")]
        prompt = short if args.prompt == "short" else full
        rows: list[dict] = []
        hard: list[dict] = []
        for kind in args.servers:
            proc, url = start(kind, model, prompt)
            try:
                load(
                    url, prompt, tickets, 1, 4, args.max_tokens, 60, not args.no_stream
                )  # warm-up: first calls allocate
                for c in args.clients:
                    r = load(
                        url, prompt, tickets, c, args.requests, args.max_tokens, args.time_limit, not args.no_stream
                    )
                    rows.append({"server": kind, "clients": c, **r})
                    console.print(f"{kind} x{c}: {r['requests']} requests, {r['requests_per_s']:.2f}/s")
                hard.append({"server": kind, **hostile(url, prompt, tickets, args.hostile_chars)})
            finally:
                proc.terminate()
                proc.wait(30)

    table = Table(title=f"serving the tiny model, {args.max_tokens} new tokens at most, instil {instil.__version__}")
    columns = ["server", "clients", "requests", "req/s", "tokens/s", "TTFT p50/p99 s", "total p50/p99 s", "x naive"]
    for col in [*columns, "p50 vs instil ms"]:
        table.add_column(col, justify="left" if col == "server" else "right")
    naive = {r["clients"]: r["requests_per_s"] for r in rows if r["server"] == "naive"}
    plain = {r["clients"]: r["total_p50"] for r in rows if r["server"] == "instil"}
    for r in rows:
        ratio = r["requests_per_s"] / naive[r["clients"]] if r["clients"] in naive else None
        extra = (r["total_p50"] - plain[r["clients"]]) * 1000 if r["clients"] in plain else None
        table.add_row(
            r["server"],
            str(r["clients"]),
            str(r["requests"]),
            f"{r['requests_per_s']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['ttft_p50']:.3f}/{r['ttft_p99']:.3f}",
            f"{r['total_p50']:.3f}/{r['total_p99']:.3f}",
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{extra:+.1f}" if extra is not None and r["server"] != "instil" else "-",
        )
    console.print(table)
    rough = Table(
        title=f"one small request (8 tokens) beside hostile ones; the big one is {args.hostile_chars:,} characters"
    )
    for col in ["server", "alone s", "0.2 s after the big one s", "big: status, s", "after 8 clients hung up s"]:
        rough.add_column(col, justify="left" if col == "server" else "right")
    for h in hard:
        rough.add_row(
            h["server"],
            f"{h['small_alone_s']:.3f}",
            f"{h['small_beside_big_s']:.3f}",
            f"{h['big_status']}, {h['big_s']:.2f}",
            f"{h['small_after_8_hangups_s']:.3f}",
        )
    console.print(rough)
    if args.json:
        args.json.write_text(json.dumps({"load": rows, "hostile": hard}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
