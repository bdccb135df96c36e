"""A big build's per-chat steps in forked worker processes, tied to the build's process.

Each worker is forked with the build's `ChatPipeline` as its argument (inherited through the
fork, never pickled, no module global) and a pipe: it receives runs of whole chats, sends back
what it made of them, and dies with the build's process (Linux `PR_SET_PDEATHSIG`), so a
killed build leaves no worker behind.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

from training.dataset.pipeline import ChatPipeline, ChatRows, RenderedPart
from training.errors import TrainingError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

logger = logging.getLogger(__name__)

# Builds of at least this many changed messages run in worker processes, one per core.
POOL_MIN_MESSAGES = 100_000
POOL_MAX_WORKERS = 8
POOL_CHUNK_MESSAGES = 20_000  # messages (whole chats) per task handed to a worker
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_count(messages: int, asked: int | None) -> int:
    """Worker processes for `messages` changed messages: 1 (no pool) for small builds.

    One per core by default; `asked` (`--workers`, TWIN_DATASET_WORKERS) sets the number
    (1: build in this process).
    """
    import multiprocessing

    if (
        messages < POOL_MIN_MESSAGES
        or not hasattr(os, "sched_getaffinity")  # forking is safe on Linux, not on macOS
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return 1
    if asked:
        return asked
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, POOL_MAX_WORKERS, messages // POOL_CHUNK_MESSAGES))


def run_in_pool(
    pipeline: ChatPipeline,
    chats: Iterable[ChatRows],
    workers: int,
    merge: Callable[[RenderedPart], None],
) -> None:
    """Hand runs of whole chats to `workers` processes; `merge` each result in reading order.

    A worker that dies (out of memory, killed) fails the build with one line; an error raised
    in a worker is raised here.
    """
    with _tokenizers_single_threaded(), _Pool(pipeline, workers) as pool:
        for chunk in _chunks(chats):
            pool.submit(chunk)
            for part in pool.ready():
                merge(part)
        for part in pool.drain():
            merge(part)


def _chunks(chats: Iterable[ChatRows]) -> Iterator[list[ChatRows]]:
    chunk: list[ChatRows] = []
    size = 0
    for chat in chats:
        chunk.append(chat)
        size += len(chat[1])
        if size >= POOL_CHUNK_MESSAGES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Pool:
    """Forked workers with one task at a time each; results come back in submission order."""

    def __init__(self, pipeline: ChatPipeline, workers: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []
        self._busy: dict[int, int] = {}  # worker -> task number it works on
        self._done: dict[int, RenderedPart] = {}
        self._submitted = 0
        self._merged = 0
        parent = os.getpid()
        for _ in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_work, args=(pipeline, theirs, parent), daemon=True)
            process.start()
            theirs.close()
            self._processes.append(process)
            self._connections.append(mine)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def submit(self, chunk: list[ChatRows]) -> None:
        """Give `chunk` to an idle worker, waiting for one to finish if none is idle.

        The chunk is pickled before the wait, so a worker that finishes gets its next task
        at once (one task at a time: a second one sent to a busy worker could block this
        process while the worker blocks sending its result).
        """
        from multiprocessing.reduction import ForkingPickler

        payload = ForkingPickler.dumps(chunk)
        while len(self._busy) == len(self._processes):
            self._receive()
        worker = next(i for i in range(len(self._processes)) if i not in self._busy)
        try:
            self._connections[worker].send_bytes(payload)
        except OSError as error:  # it died idle, between two tasks
            raise self._died(worker) from error
        self._busy[worker] = self._submitted
        self._submitted += 1

    def ready(self) -> Iterator[RenderedPart]:
        """The results that are next in order and already back."""
        while self._merged in self._done:
            yield self._done.pop(self._merged)
            self._merged += 1

    def drain(self) -> Iterator[RenderedPart]:
        """Every outstanding result, in order."""
        while self._merged < self._submitted:
            if self._merged not in self._done:
                self._receive()
            yield from self.ready()

    def _receive(self) -> None:
        """Wait for a busy worker to answer; a dead worker or a worker's error is raised."""
        from multiprocessing.connection import wait

        busy = list(self._busy)
        waiting: dict[Any, int] = {self._connections[i]: i for i in busy}
        waiting.update({self._processes[i].sentinel: i for i in busy})
        for ready in wait(list(waiting)):
            worker = waiting[ready]
            if worker not in self._busy:
                continue
            try:
                kind, value = self._connections[worker].recv()
            except (EOFError, OSError) as error:
                raise self._died(worker) from error
            if kind == "error":
                raise value
            self._done[self._busy.pop(worker)] = value

    def _died(self, worker: int) -> TrainingError:
        """The error for a worker whose pipe closed: how it ended and what to do."""
        process = self._processes[worker]
        process.join(timeout=5)  # the pipe closes a moment before the process is reaped
        code = process.exitcode
        if code is None:
            how = "its pipe closed"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        return TrainingError(
            f"a dataset worker process died ({how}); out of memory? Build in one process "
            "with `twin dataset build --workers 1` (or TWIN_DATASET_WORKERS=1)"
        )

    def close(self, kill: bool) -> None:
        for process, connection in zip(self._processes, self._connections, strict=True):
            if kill:
                process.kill()
            else:
                try:
                    connection.send(None)
                except OSError:
                    process.kill()
            connection.close()
        for process in self._processes:
            process.join()


def _work(pipeline: ChatPipeline, connection: Connection, parent: int) -> None:
    """A worker's loop: chunks of chats in, `("part", RenderedPart)` or `("error", e)` out."""
    _die_with_parent(parent)
    while (chunk := connection.recv()) is not None:
        try:
            answer: tuple[str, Any] = ("part", pipeline.run(chunk, RenderedPart()))
        except Exception as error:  # noqa: BLE001 - handed to the build's process to raise
            answer = ("error", error)
        try:
            connection.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as error:  # an odd exception
            failure = f"{type(answer[1]).__name__}: {answer[1]}" if answer[0] == "error" else error
            connection.send(("error", TrainingError(f"a dataset worker failed: {failure}")))


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the build's process dies (Linux only)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("no prctl here: dataset workers do not die with their build")
    if os.getppid() != parent:  # the build died before the request took effect
        os._exit(1)


@contextmanager
def _tokenizers_single_threaded() -> Iterator[None]:
    """Fork workers with one-threaded tokenizers: the workers already fill the cores.

    Configured this way, tokenizers also forks without its "parallelism has already been used"
    warning.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
