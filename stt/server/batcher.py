"""Concurrent requests' CTranslate2 calls, run as one batch when they wait at the same time.

faster-whisper calls its CTranslate2 model one window at a time (`encode`, `detect_language`,
`generate`, `align`). `Batcher` stands in for that model: each request keeps its own
faster-whisper logic, window and prompt, but when several requests wait on the same kind
of call at the same moment, one batched call serves them all. CTranslate2 computes each
item of a batch as it would alone (measured: identical encoder outputs, scores and tokens),
so a request's text does not depend on who shared its batch; decoding 8 windows in one
`generate` costs about 40 % of 8 separate calls on 2 cores (the encoder's cost stays
linear on a CPU; on a GPU batching pays off there too).

A lone request is never held back: a call runs at once unless another request inside the
engine is about to make a compatible call, and then it waits at most `linger_s`. A batch
that fails is retried one call at a time, so one bad request fails alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ctranslate2
import numpy as np


@dataclass
class Encoded:
    """One window's encoder output, as handed back to faster-whisper (which only passes it
    on to `generate`, `detect_language` or `align`). `keep` is the memory `view` borrows."""

    view: ctranslate2.StorageView
    keep: object = None


@dataclass
class Counters:
    """What the model did, for tests and /health: proof of the work skipped or shared."""

    encoder_passes: int = 0  # windows encoded
    language_detections: int = 0  # windows whose language was detected
    generate_calls: int = 0  # windows decoded (each temperature counts)
    batches: int = 0  # model calls that served more than one window
    batched_windows: int = 0  # windows served by those calls
    largest_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Call:
    kind: str  # "encode" | "detect" | "generate"
    key: tuple[object, ...]  # calls with equal kind and key can share a batch
    args: tuple[Any, ...]
    since: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Batcher:
    """Drop-in for `WhisperModel.model` (a ctranslate2.models.Whisper)."""

    def __init__(self, model: ctranslate2.models.Whisper, *, max_batch: int, threads: int = 1,
                 linger_s: float = 0.02) -> None:
        self._model = model
        self.max_batch = max(1, max_batch)
        self.linger_s = linger_s
        self.counters = Counters()
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._sessions = 0  # requests in their model phase
        self._blocked = 0  # of them, how many wait on a model call
        for i in range(max(1, threads)):
            threading.Thread(target=self._serve, name=f"ct2-batcher-{i}", daemon=True).start()

    def __getattr__(self, name: str) -> Any:  # is_multilingual, device, n_mels...
        return getattr(self._model, name)

    @contextmanager
    def session(self) -> Iterator[None]:
        """Marks a request's model phase: while it runs Python between two model calls,
        other requests' calls wait a little for it (at most `linger_s`)."""
        with self._cond:
            self._sessions += 1
        try:
            yield
        finally:
            with self._cond:
                self._sessions -= 1
                self._cond.notify_all()

    # -- the model's methods that faster-whisper calls ------------------------------------

    def encode(self, features: ctranslate2.StorageView, to_cpu: bool = False) -> Encoded:
        return self._submit("encode", (tuple(features.shape), to_cpu), (features, to_cpu))

    def detect_language(self, encoded: Encoded) -> list[list[tuple[str, float]]]:
        return [self._submit("detect", (), (encoded,))]

    def generate(self, encoded: Encoded, prompts: list[list[int]], **kwargs: Any) -> list[Any]:
        if len(prompts) != 1 or kwargs.get("sampling_temperature", 0) > 0:
            # Sampling (the fallback temperatures) draws random numbers: never shared.
            return self._alone(lambda: self._generate_one(encoded, prompts, kwargs))
        return [self._submit("generate", _generate_key(prompts[0], kwargs), (encoded, prompts[0], kwargs))]

    def align(self, encoded: Encoded, *args: Any, **kwargs: Any) -> Any:
        return self._alone(lambda: self._model.align(encoded.view, *args, **kwargs))

    # -- queueing -------------------------------------------------------------------------

    def _submit(self, kind: str, key: tuple[object, ...], args: tuple[Any, ...]) -> Any:
        call = _Call(kind, key, args)
        with self._cond:
            self._queue.append(call)
            self._blocked += 1
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _alone(self, run: Callable[[], Any]) -> Any:
        with self._cond:
            self._blocked += 1
        try:
            return run()
        finally:
            with self._cond:
                self._blocked -= 1
                self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            group = self._next_group()
            self._run(group)
            with self._cond:
                self._blocked -= len(group)
                self._cond.notify_all()
            for call in group:
                call.done.set()

    def _next_group(self) -> list[_Call]:
        with self._cond:
            while True:
                if not self._queue:
                    self._cond.wait()
                    continue
                # Wait while a request inside the engine runs Python and may soon join.
                left = self._queue[0].since + self.linger_s - time.monotonic()
                if left > 0 and len(self._queue) < self.max_batch and self._sessions > self._blocked:
                    self._cond.wait(left)
                    continue
                first = self._queue[0]
                group = [c for c in self._queue if c.kind == first.kind and c.key == first.key][:self.max_batch]
                self._queue = [c for c in self._queue if c not in group]
                return group

    def _run(self, group: list[_Call]) -> None:
        try:
            results = self._batched(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for call in group:  # one bad window must not fail the others
                self._run([call])
            return
        for call, result in zip(group, results):
            call.result = result
        self._count(group)

    def _batched(self, group: list[_Call]) -> Sequence[Any]:
        kind = group[0].kind
        if kind == "encode":
            return self._encode([c.args[0] for c in group], group[0].args[1])
        encoded = _stacked([c.args[0] for c in group])
        if kind == "detect":
            return self._model.detect_language(encoded.view)
        kwargs = group[0].args[2]
        return self._model.generate(encoded.view, [c.args[1] for c in group], **kwargs)

    def _encode(self, features: list[ctranslate2.StorageView], to_cpu: bool) -> list[Encoded]:
        if len(features) == 1:
            return [Encoded(self._model.encode(features[0], to_cpu=to_cpu))]
        batch = np.ascontiguousarray(np.concatenate([np.asarray(f) for f in features]))
        out = _host_array(self._model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True))
        return [Encoded(ctranslate2.StorageView.from_array(out[i:i + 1]), out) for i in range(len(features))]

    def _generate_one(self, encoded: Encoded, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[Any]:
        with self._cond:
            self.counters.generate_calls += 1
        return self._model.generate(encoded.view, prompts, **kwargs)

    def _count(self, group: list[_Call]) -> None:
        c = self.counters
        with self._cond:
            kind, n = group[0].kind, len(group)
            if kind == "encode":
                c.encoder_passes += n
            elif kind == "detect":
                c.language_detections += n
            else:
                c.generate_calls += n
            if n > 1:
                c.batches += 1
                c.batched_windows += n
                c.largest_batch = max(c.largest_batch, n)


def _generate_key(prompt: list[int], kwargs: dict[str, Any]) -> tuple[object, ...]:
    # CTranslate2 batches prompts only when <|startoftranscript|> sits at the same position;
    # equal lengths keep the rest aligned too.
    options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return (len(prompt), options)


def _host_array(view: ctranslate2.StorageView) -> np.ndarray:
    if view.device != "cpu":
        view = view.to_device(ctranslate2.Device.cpu)
    return np.asarray(view)


def _stacked(encoded: list[Encoded]) -> Encoded:
    if len(encoded) == 1:
        return encoded[0]
    batch = np.ascontiguousarray(np.concatenate([_host_array(e.view) for e in encoded]))
    return Encoded(ctranslate2.StorageView.from_array(batch), batch)
