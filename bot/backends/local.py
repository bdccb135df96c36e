"""The local backend: transformers + peft in this process, with a micro-batcher.

Generation itself is `training.generation.generate_batch`, the loop `twin eval` uses too; this
module only queues requests, batches those that arrive together and streams each row back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.backends.base import adapter_name
from bot.errors import BackendError
from training.generation import (
    GenerationError,
    RowStreamer,
    Sampling,
    generate_batch,
    stop_token_ids,
)
from training.prompt import Turn, render_prompt

if TYPE_CHECKING:
    from training.model import ModelOptions

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    """One prompt waiting for its reply; the worker thread feeds `pieces`, then None."""

    prompt: list[int]
    sampling: Sampling
    pieces: queue.SimpleQueue[str | BaseException | None] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class LocalBackend:
    """transformers + peft in this process, with a micro-batcher.

    One worker thread owns the model: requests arriving within `batch_window` seconds of each
    other (up to `max_batch`) with the same sampling settings share one left-padded `generate`.
    The same lock guards generation and adapter switches, so a switch never lands mid-reply.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        run_id: int | None = None,
        max_batch: int = 8,
        batch_window: float = 0.01,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.run_id = run_id
        self.max_batch = max(1, max_batch)
        self.batch_window = batch_window
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._model_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        try:
            self.stop_ids = stop_token_ids(model, tokenizer)
        except GenerationError as error:
            raise BackendError(str(error)) from error
        name = getattr(getattr(model, "config", None), "name_or_path", "") or "model"
        self.base_model = str(name)

    @classmethod
    def load(
        cls,
        options: ModelOptions,
        adapter_path: Path | None,
        *,
        run_id: int | None = None,
        max_batch: int = 8,
        batch_window: float = 0.01,
    ) -> LocalBackend:
        """Load the base model and the run's adapter through `training.model`."""
        from training.model import load_for_inference

        model, tokenizer = load_for_inference(options, adapter_path)
        backend = cls(
            model, tokenizer, run_id=run_id, max_batch=max_batch, batch_window=batch_window
        )
        backend.base_model = options.base_model
        return backend

    @property
    def description(self) -> str:
        adapter = adapter_name(self.run_id) if self.run_id is not None else "no adapter"
        return f"local: {self.base_model} + {adapter}"

    def prompt_tokens(self, turns: Sequence[Turn], system: str | None) -> list[int]:
        return list(render_prompt(list(turns), self.tokenizer, system=system))

    def prompt_length(self, turns: Sequence[Turn], system: str | None) -> int:
        return len(self.prompt_tokens(turns, system))

    def generate(self, turns: Sequence[Turn], system: str | None, sampling: Sampling) -> str:
        return "".join(self.stream(turns, system, sampling))

    def stream(
        self, turns: Sequence[Turn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        request = _Request(self.prompt_tokens(turns, system), sampling)
        return self._pieces(self.submit(request))

    def submit(self, request: _Request) -> _Request:
        """Queue a request for the worker thread (started on first use)."""
        if self._closed:
            raise BackendError("the local backend is closed")
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._serve, name="twin-generate", daemon=True
                )
                self._worker.start()
        self._requests.put(request)
        return request

    def swap_adapter(self, path: Path, run_id: int) -> None:
        from training.model import add_adapter, remove_adapter, set_active_adapter

        name = adapter_name(run_id)
        with self._model_lock:
            old = self.model.active_adapter
            if name == old:
                return
            try:
                add_adapter(self.model, name, Path(path))
                set_active_adapter(self.model, name)
            except Exception as error:
                if name in self.model.peft_config and name != self.model.active_adapter:
                    remove_adapter(self.model, name)
                raise BackendError(f"cannot load the adapter of run {run_id}: {error}") from error
            remove_adapter(self.model, old)
            self.run_id = run_id
        logger.info("now serving adapter %s (was %s)", name, old)

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join(timeout=30)

    # -- the worker thread --

    def _pieces(self, request: _Request) -> Iterator[str]:
        try:
            while (piece := request.pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise BackendError(f"generation failed: {piece}") from piece
                yield piece
        finally:
            request.cancelled.set()

    def _serve(self) -> None:
        waiting: deque[_Request] = deque()
        while True:
            if not waiting:
                first = self._requests.get()
                if first is None:
                    return
                waiting.append(first)
            if not self._gather(waiting):
                self._fail_all(waiting, BackendError("the local backend is closed"))
                return
            batch = self._take_batch(waiting)
            if batch:
                self._run_batch(batch)

    def _gather(self, waiting: deque[_Request]) -> bool:
        """Collect what arrives within the batch window; False when the backend closes."""
        deadline = time.monotonic() + self.batch_window
        while len(waiting) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                request = (
                    self._requests.get(timeout=left) if left > 0 else self._requests.get_nowait()
                )
            except queue.Empty:
                return True
            if request is None:
                return False
            waiting.append(request)
        return True

    def _take_batch(self, waiting: deque[_Request]) -> list[_Request]:
        """The oldest request and those waiting with the same sampling settings, in order."""
        while waiting and waiting[0].cancelled.is_set():
            waiting.popleft().pieces.put(None)
        if not waiting:
            return []
        sampling = waiting[0].sampling
        batch = [request for request in waiting if request.sampling == sampling]
        batch = batch[: self.max_batch]
        for request in batch:
            waiting.remove(request)
        return batch

    def _fail_all(self, requests: Sequence[_Request], error: BaseException) -> None:
        for request in requests:
            request.pieces.put(error)

    def _run_batch(self, batch: list[_Request]) -> None:
        ended = [False] * len(batch)

        def on_end(row: int) -> None:
            ended[row] = True
            batch[row].pieces.put(None)

        streamer = RowStreamer(
            self.tokenizer,
            len(batch),
            self.stop_ids,
            on_text=lambda row, piece: batch[row].pieces.put(piece),
            on_end=on_end,
            cancelled=lambda row: batch[row].cancelled.is_set(),
        )
        try:
            with self._model_lock:
                self._generate(batch, streamer)
        except Exception as error:
            logger.exception("generation failed for a batch of %d", len(batch))
            for row, request in enumerate(batch):
                if not ended[row]:
                    ended[row] = True
                    request.pieces.put(error)

    def _generate(self, batch: list[_Request], streamer: RowStreamer) -> None:
        generate_batch(
            self.model,
            self.tokenizer,
            [request.prompt for request in batch],
            batch[0].sampling,
            streamer=streamer,
        )
