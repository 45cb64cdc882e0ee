"""Dynamic batching: texts from concurrent requests are merged into one model call of up to
``max_batch_size`` texts, waiting at most ``max_wait_ms`` for a batch to fill. The queue is
bounded: when it is full, new requests are refused at once (the server answers 503) instead of
piling up latency. ``close()`` stops intake and finishes everything already queued."""

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFullError(Exception):
    """The batcher's queue is at its bound; the client should retry later."""


class ClosedError(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class DynamicBatcher:
    def __init__(
        self,
        predict: Callable[[list[str]], Sequence[object]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        # One model call at a time: the model uses all cores itself; the event loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimformer-model")

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        if self._executor._shutdown:  # started again after close() (a second app lifespan)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="slimformer-model")
        self._closed = False
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, texts: list[str]) -> list[object]:
        """Results for ``texts`` in order; raises QueueFullError / ClosedError."""
        if self._closed or self._queue is None:
            raise ClosedError()
        if self._queue.qsize() + len(texts) > self.max_queue:
            raise QueueFullError()
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in texts]
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    async def _next_batch(self) -> list[_Item]:
        """Up to max_batch_size items; ends early at the close() sentinel (text None)."""
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued + self.max_wait
        while len(batch) < self.max_batch_size and batch[-1].text is not None:
            remaining = deadline - time.perf_counter()
            try:
                if remaining <= 0:
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (TimeoutError, asyncio.QueueEmpty):
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch = await self._next_batch()
            stop = batch[-1].text is None
            batch = [i for i in batch if i.text is not None]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.predict, [i.text for i in batch]
                )
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
            except Exception as exc:  # noqa: BLE001  (the request fails, the server lives)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            self.stats.batches += 1
            self.stats.texts += len(batch)
            self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
            if self.on_batch:
                self.on_batch(len(batch), time.perf_counter() - t0)

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        if self._closed or self._queue is None:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        self._queue.put_nowait(_Item(None, loop.create_future()))
        await self._worker
        self._executor.shutdown(wait=True)
