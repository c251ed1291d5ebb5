"""The generation side of the server: one thread owns the model and generates queued requests in batches.

    engine = Engine(model, tokenizer, renderer, batch_size=8, max_queue=64)
    job = Job(ids, max_tokens=64, on_token=tokens.put)     # ids: the rendered prompt, tokenized by the caller
    engine.submit(job)                                       # QueueFull past max_queue waiting requests
    generation = job.future.result()                         # or job.cancel() when the client has gone

Everything that can be done without the model (rendering, tokenizing, the context check) is done by the caller, on its
own thread, so one long prompt never holds up the requests queued behind it.

Continuous batching (:mod:`instil.eval.continuous`): requests queued while others generate are prefilled and join the
running batch at its next step, and each leaves it at its own end (stop token, ``max_tokens``, client gone), so a short
answer never waits for a long one and the batch stays full under load. A model whose cache cannot be merged (sliding
windows, state-space layers, prompt tuning) is served in whole batches instead: the requests waiting when a batch
starts, generated together by :func:`~instil.eval.generate.generate_rows`. Either way each request keeps its own
``max_tokens``, sampling, adapter and grammar, with the padding and stop tokens evaluation uses: greedy answers are
the evaluated ones. Requests sharing their rendered system turn (``Job.prefix_len``) take its KV from the engine's
:class:`~instil.eval.prefix.PrefixCache`, computed once. A cancelled request is dropped while queued, or stopped at
its next token when it is already generating; its batch-mates go on.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instil.eval.generate import Row, generate_rows
from instil.eval.prefix import PrefixCache
from instil.serve.catalog import BASE_ADAPTER

__all__ = ["Engine", "EngineStats", "Job", "QueueFull", "serving_threads"]

log = logging.getLogger("instil.serve")

MAX_BATCH_TOKENS = 32_768
"""The largest batch :class:`Engine` generates by default, in padded tokens: rows x (longest prompt + most new
tokens). A long prompt then runs with few batch-mates instead of padding many short ones to its length."""


def serving_threads(model: Any, threads: int | None = None) -> int | None:
    """Give torch ``threads`` intra-op threads (None: on a CPU, every core this process may use but one) and return
    how many it has now; None, changing nothing, for a model on a GPU with no ``threads`` asked for.

    For the process that serves (``instil serve``), not for a library call: the HTTP side (the event loop, parsing,
    streaming) needs a core of its own, and torch's threads on every core then wait on each other whenever it runs;
    on 2 cores generation beside 8 clients went from 46 to 67 requests/s with one thread (``benchmarks/serve_load.py``).
    """
    import os

    import torch

    if threads is None:
        if str(getattr(model, "device", "cpu")).split(":")[0] != "cpu":
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores - 1)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    torch.set_num_threads(threads)
    return threads


class QueueFull(Exception):
    """The engine holds ``max_queue`` waiting requests already; ``retry_after_s`` estimates when there is room."""

    def __init__(self, waiting: int, retry_after_s: float) -> None:
        super().__init__(f"{waiting} requests are waiting")
        self.waiting, self.retry_after_s = waiting, retry_after_s


@dataclass
class Job:
    """One request for the engine: a tokenized prompt and how to generate from it."""

    ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_token: Callable[[int], None] | None = None
    """Called with each new token id, from the engine's thread (streaming); it must return at once."""
    matcher: Any = None
    """A grammar matcher (:mod:`instil.eval.constrain`) the answer is held to; None: free."""
    prefix_len: int = 0
    """How many leading ``ids`` are the rendered system turn shared with other requests (0: none known): batches
    of jobs sharing them take their KV from the engine's prefix cache."""
    adapter: str | None = None
    """The LoRA adapter to answer with, in a model holding several (``__base__``: the base); None: the model as
    it is. Jobs of different adapters share a batch."""
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    """Resolves to the :class:`~instil.eval.generate.Generation`, or to the error that failed its batch."""
    gone: threading.Event = field(default_factory=threading.Event)
    first_token_at: float | None = None
    """``time.perf_counter()`` when its first token was generated."""
    batch_size: int = 1
    """How many requests its batch generated together."""

    def cancel(self) -> None:
        """The client has gone: drop the request if it is still queued, stop it at its next token if not."""
        self.gone.set()
        self.future.cancel()  # succeeds only while queued; a running job is stopped by `gone`


@dataclass
class _Call:
    """Work for the engine's thread between batches (loading an adapter into the model it owns)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class EngineStats:
    """Counters since the engine started (read them for metrics; they only grow)."""

    generated: int = 0
    """Requests answered."""
    cancelled: int = 0
    """Requests dropped or stopped because their client went away."""
    failed: int = 0
    """Requests whose batch raised."""
    batches: int = 0
    """Batches run (a batch of one counts); with continuous batching, groups of requests that joined together."""
    steps: int = 0
    """Decoding steps run by continuous batching (each gives every running request a token)."""
    batch_seconds: float = 0.0
    """Seconds spent generating."""
    prefix_hits: int = 0
    """Batches whose shared prefix's KV came from the prefix cache."""
    prefix_misses: int = 0
    """Batches whose shared prefix's KV was computed (then kept)."""


class Engine:
    """One thread generates; requests wait in a bounded queue, and those waiting together are batched."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        renderer: Any,
        *,
        batch_size: int = 8,
        max_queue: int = 64,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        prefix_caching: bool = True,
        gather_s: float = 0.008,
        continuous: bool = True,
    ) -> None:
        if batch_size < 1 or max_queue < 1 or max_batch_tokens < 1:
            raise ValueError(
                f"batch_size ({batch_size}), max_queue ({max_queue}) and max_batch_tokens ({max_batch_tokens}) must "
                "be at least 1"
            )
        self.model, self.tokenizer, self.renderer = model, tokenizer, renderer
        self.batch_size, self.max_queue, self.max_batch_tokens = batch_size, max_queue, max_batch_tokens
        self._held: Job | _Call | None = None  # taken from the queue, left for the next turn (it did not fit this one)
        self.stats = EngineStats()
        self.prefix_cache = PrefixCache() if prefix_caching else None
        # How long a batch may wait for requests it has reason to expect: ones being tokenized now, or, after a
        # batch of n, until it holds n again (clients of a busy server send again as their answers arrive).
        self.gather_s = gather_s
        # Requests join and leave a running batch between its steps, where the model's cache allows it
        # (instil.eval.continuous); otherwise, and with False, whole batches run to their longest answer.
        self.continuous = continuous
        self._batch: Any = None
        if continuous:  # found out now (one token through the model), not when the first request is waiting
            from instil.eval.continuous import RunningBatch

            # None (and logged why) for a model it cannot batch this way: whole batches then.
            self._batch = RunningBatch.for_model(model, tokenizer, renderer, prefix_cache=self.prefix_cache)
        self._coming = 0
        self._last_batch = 0
        self._queue: queue.Queue[Job | _Call | None] = queue.Queue()
        self._waiting = 0  # jobs submitted and not yet taken into a batch (the queue also holds the stop marker)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Requests queued and not yet generating."""
        return self._waiting

    def submit(self, job: Job, *, expected: bool = False) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` requests are waiting already. ``expected``:
        it was announced by ``expect(1)``, which this takes back (queued or refused, it is no longer on its way)."""
        with self._lock:
            # In one step with the queueing: a batch never waits for a job that is already in the queue.
            if expected:
                self._coming -= 1
            if self._waiting >= self.max_queue:
                raise QueueFull(self._waiting, self._retry_after())
            self._waiting += 1
            self._ensure_thread()
            self._queue.put(job)

    def expect(self, n: int) -> None:
        """``n`` more (or, negative, fewer) requests are being prepared for :meth:`submit` (rendered, tokenized): a
        batch about to start waits up to ``gather_s`` for them."""
        with self._lock:
            self._coming += n

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine's thread between batches, or between decoding steps of the running batch (so it
        may add an adapter, never change what running requests use), ahead of no request queued before it; the
        future holds its result."""
        item = _Call(fn)
        with self._lock:
            self._ensure_thread()
        self._queue.put(item)
        return item.future

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="instil-serve-generate", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the requests in hand and stop the thread (queued requests are cancelled)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)
        with self._lock:
            # A thread still finishing its requests stays the engine's: a request submitted now is cancelled by
            # it, never generated by a second thread on the same model and cache.
            if self._thread is thread and (thread is None or not thread.is_alive()):
                self._thread = None

    def _retry_after(self) -> float:
        """Seconds until the waiting requests have been generated, at the pace so far (busy seconds per answered
        request, batching included; 1 s before any was answered)."""
        answered = self.stats.generated + self.stats.failed
        per_request = self.stats.batch_seconds / answered if answered else 1.0
        return max(1.0, per_request * (self._waiting + 1))

    def _take(self, *, running: int = 0, width: int = 0, new: int = 0) -> tuple[list[Job], bool]:
        """The jobs to start now, and True when stopping. With nothing ``running``, it waits for the first queued
        job, then takes what else is queued (waiting up to ``gather_s`` for requests on their way); beside
        ``running`` requests (padded to ``width`` prompt tokens, ``new`` new ones at most) it takes only what is
        queued now. Either way the batch's padded size, rows x (longest prompt + most new tokens), stays within
        ``max_batch_tokens``. A call queued ahead of them is run first."""
        wait = running == 0
        if running >= self.batch_size:
            return [], False
        if self._held is not None:
            first, self._held = self._held, None
        elif wait:
            first = self._queue.get()
        else:
            try:
                first = self._queue.get_nowait()
            except queue.Empty:
                return [], False
        if first is None:
            return [], True
        if isinstance(first, _Call):
            _run_call(first)
            return [], False
        jobs: list[Job] = []
        stopping = False
        if first.gone.is_set() and first.future.cancel():  # gone while queued: never held up the queue for it
            with self._lock:
                self._waiting -= 1
            self.stats.cancelled += 1
            return [], False
        padded = (running + 1) * (max(width, len(first.ids)) + max(new, first.max_tokens))
        if running and padded > self.max_batch_tokens:
            self._held = first  # it joins when some of the running requests have finished
            return [], False
        jobs.append(first)
        width, new = max(width, len(first.ids)), max(new, first.max_tokens)
        until = time.perf_counter() + self.gather_s
        while running + len(jobs) < self.batch_size:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                left = until - time.perf_counter()
                if not wait or left <= 0 or (self._coming <= 0 and len(jobs) >= self._last_batch):
                    break
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if more is None:
                stopping = True
                break
            if isinstance(more, _Call):
                self._held = more  # after this batch, before the jobs queued behind it
                break
            w, n = max(width, len(more.ids)), max(new, more.max_tokens)
            if (running + len(jobs) + 1) * (w + n) > self.max_batch_tokens:
                self._held = more  # first in the next batch: the queue's order is kept
                break
            jobs.append(more)
            width, new = w, n
        if wait:
            self._last_batch = len(jobs)
        with self._lock:
            self._waiting -= len(jobs)  # a held job still waits
        live = []
        for j in jobs:
            # Running from here: a later cancel() cannot succeed, the job is stopped through `gone` instead.
            if j.gone.is_set() or not j.future.set_running_or_notify_cancel():
                self.stats.cancelled += 1
                continue
            live.append(j)
        return live, stopping

    def _loop(self) -> None:
        if self._batch is not None:
            self._continuous(self._batch)
            return
        while True:
            jobs, stopping = self._take()
            if jobs:
                self._run(jobs)
            if stopping:
                self._drain()
                return

    def _continuous(self, batch: Any) -> None:
        """Requests join the running batch between its steps and leave it when they end."""
        from instil.eval.continuous import Seq

        owners: dict[int, Job] = {}
        stopping = False
        while True:
            if not stopping:
                widest = max((len(s.row.ids) for s in batch.seqs), default=0)
                most = max((s.row.max_new_tokens for s in batch.seqs), default=0)
                jobs, stopping = self._take(running=len(batch), width=widest, new=most)
            else:
                jobs = []
            began = time.perf_counter()
            ended = []
            if jobs:
                seqs = []
                for j in jobs:
                    row = Row(j.ids, j.max_tokens, on_token=_streamed(j), cancelled=j.gone.is_set, matcher=j.matcher)
                    seqs.append(Seq(row, j.temperature, j.top_p, j.seed, j.adapter, j.prefix_len))
                owners.update((id(seq), j) for seq, j in zip(seqs, jobs, strict=True))
                self.stats.batches += 1
                try:
                    ended += batch.add(seqs)
                except BaseException as e:  # only the newcomers fail (a long prompt out of memory); the rest go on
                    log.exception("prefill failed for %d request(s)", len(seqs))
                    batch.discard(seqs)
                    self._fail([owners.pop(id(seq)) for seq in seqs], e)
            try:
                if batch:
                    ended += batch.step()
                    self.stats.steps += 1
            except BaseException as e:  # answered as a 500 to each running request; the engine lives on
                log.exception("generation failed for a batch of %d request(s)", len(batch))
                done = {id(seq) for seq, _ in ended}
                self._fail([j for key, j in owners.items() if key not in done], e)
                for key in [key for key in owners if key not in done]:
                    del owners[key]
                batch.close()
            finally:
                self.stats.batch_seconds += time.perf_counter() - began
                if self.prefix_cache is not None:
                    self.stats.prefix_hits, self.stats.prefix_misses = self.prefix_cache.hits, self.prefix_cache.misses
            for seq, generation in ended:
                j = owners.pop(id(seq))
                j.batch_size = seq.batch_size
                if j.first_token_at is None and seq.first_at is not None:
                    j.first_token_at = seq.first_at
                if j.gone.is_set():
                    self.stats.cancelled += 1
                else:
                    self.stats.generated += 1
                j.future.set_result(generation)
            if stopping and not batch:
                self._drain()
                return

    def _drain(self) -> None:
        held, self._held = self._held, None
        while True:
            if isinstance(held, _Call):
                if held.future.set_running_or_notify_cancel():
                    held.future.set_exception(RuntimeError("the engine stopped before this ran"))
            elif held is not None:
                with self._lock:
                    self._waiting -= 1
                if held.future.cancel():
                    self.stats.cancelled += 1
            try:
                held = self._queue.get_nowait()
            except queue.Empty:
                return

    def _fail(self, jobs: list[Job], error: BaseException) -> None:
        self.stats.failed += len(jobs)
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(error)

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for j in jobs:  # one generate call takes one sampling setting; greedy answers ignore the seed
            key = (j.temperature, j.top_p, j.seed) if j.temperature > 0 else (0.0, 1.0, None)
            groups.setdefault(key, []).append(j)
        for (temperature, top_p, seed), group in groups.items():
            for j in group:
                j.batch_size = len(group)
            rows = [
                Row(j.ids, j.max_tokens, on_token=_streamed(j), cancelled=j.gone.is_set, matcher=j.matcher)
                for j in group
            ]
            adapters = [j.adapter or BASE_ADAPTER for j in group] if any(j.adapter for j in group) else None
            shared = group[0].prefix_len if all(j.prefix_len == group[0].prefix_len for j in group) else 0
            began = time.perf_counter()
            try:
                if seed is not None:
                    import torch

                    torch.manual_seed(seed)
                sample = temperature > 0
                started = time.perf_counter()
                gens = generate_rows(
                    self.model,
                    self.tokenizer,
                    self.renderer,
                    rows,
                    do_sample=sample,
                    temperature=temperature if sample else 1.0,
                    top_p=top_p if sample else 1.0,
                    adapter_names=adapters,
                    prefix_cache=self.prefix_cache,
                    prefix_len=shared,
                )
            except BaseException as e:  # answered as a 500 to each request of the group; the engine lives on
                log.exception("generation failed for a batch of %d request(s)", len(group))
                self.stats.failed += len(group)
                for j in group:
                    j.future.set_exception(e)
                continue
            finally:
                self.stats.batches += 1
                self.stats.batch_seconds += time.perf_counter() - began
                if self.prefix_cache is not None:
                    self.stats.prefix_hits, self.stats.prefix_misses = self.prefix_cache.hits, self.prefix_cache.misses
            for j, g in zip(group, gens, strict=True):
                if j.first_token_at is None and g.output_tokens:
                    j.first_token_at = started + g.first_token_s
                if j.gone.is_set():
                    self.stats.cancelled += 1
                else:
                    self.stats.generated += 1
                j.future.set_result(g)


def _run_call(call: _Call) -> None:
    if not call.future.set_running_or_notify_cancel():
        return
    try:
        call.future.set_result(call.fn())
    except BaseException as e:  # the caller gets it; the engine lives on
        call.future.set_exception(e)


def _streamed(job: Job) -> Callable[[int], None] | None:
    """The job's token callback, noting when its first token came; None for a job that is not streamed (its first
    token's time then comes from its generation: the batch's start plus its prefill)."""
    if job.on_token is None:
        return None
    forward = job.on_token

    def on_token(token: int) -> None:
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
        forward(token)

    return on_token
