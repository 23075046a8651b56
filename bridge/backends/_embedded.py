"""Shared plumbing for the embedded backends: shipped model paths and one-worker executors.

Importing this module sets `OMP_WAIT_POLICY=PASSIVE` (unless the environment already sets
it) before llama.cpp or CTranslate2 load their OpenMP runtime. With the default policy their
idle worker threads spin at barriers; on a 2-core machine where ASR, LLM and TTS share the
cores, a 40-token SmolLM2 reply while Whisper transcribes took a median 3.3 s spinning and
1.2 s passive (`bench/contention.py`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypedDict, TypeVar

from bridge.backends.base import BackendError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

T = TypeVar("T")
M = TypeVar("M")


def package_file(package: str, relative: str) -> Path | None:
    """`relative` inside an installed package's folder, found without importing the package.

    The model packages' own `__init__` modules import things we do not need (the `llm`
    plugin system, for one), so the folder comes from the import spec alone.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def resolve_model(configured: str, package: str, relative: str) -> Path | None:
    """The configured model path, or the one shipped in `package` when none is configured."""
    if configured:
        return Path(configured).expanduser()
    return package_file(package, relative)


class ModelRunner:
    """Runs blocking model work on one dedicated thread, bounded by a timeout.

    A model is loaded and used on the same single worker, so loading happens once, in
    order, and never blocks the event loop. On a timeout the error is raised only once the
    work has left the worker (its result dropped): a caller's pool slot stays taken while
    the worker is busy. A caller that is cancelled stops waiting at once.
    """

    def __init__(self, backend: str, url: str, thread_name: str, timeout_s: float) -> None:
        self.backend = backend
        self.url = url
        self.timeout_s = timeout_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    async def run(self, work: Callable[[], T], timeout_s: float | None = None) -> T:
        """Run `work` on the worker; raise `BackendError` on timeout or failure."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self.executor, work)
        except RuntimeError as exc:  # executor shut down
            raise BackendError(self.backend, self.url, "unavailable", "closed") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError as exc:
            await asyncio.wait({future})  # the worker is still on it: hold on until it is not
            raise BackendError(
                self.backend, self.url, "timeout", f"no result within {timeout_s:g} s"
            ) from exc
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                self.backend, self.url, "unavailable", f"{type(exc).__name__}: {exc}"[:200]
            ) from exc

    def close(self) -> None:
        """Drop queued work and let the running job finish in the background."""
        self.executor.shutdown(wait=False, cancel_futures=True)


class WorkerOptions(TypedDict, total=False):
    """How an embedded model runs, the same for every one: `threads` for inference (default
    2) and `timeout_s` allowed per request (default 10)."""

    threads: int
    timeout_s: float


class EmbeddedModel(Generic[M]):
    """An in-process model loaded once on its own worker thread: the load-once lock and
    `warmup` / `ready` / `aclose`. A subclass says how to build its model in `_create`."""

    name: str

    def __init__(
        self, url: str, thread_name: str, *, threads: int = 2, timeout_s: float = 10.0
    ) -> None:
        self.url = url
        self.threads = threads
        self._runner = ModelRunner(self.name, url, thread_name, timeout_s)
        self._model: M | None = None
        self._load_lock = threading.Lock()

    @property
    def timeout_s(self) -> float:
        """The wait allowed per request."""
        return self._runner.timeout_s

    def _create(self) -> M:
        """Build the model (on the worker thread, at most once); raise `BackendError`."""
        raise NotImplementedError

    def _load(self) -> M:
        with self._load_lock:
            if self._model is None:
                self._model = self._create()
            return self._model

    async def run(self, work: Callable[[M], T]) -> T:
        """Run `work(model)` on the worker, loading the model first if need be."""
        await self.warmup()
        return await self._runner.run(lambda: work(self._load()), self._runner.timeout_s)

    async def warmup(self) -> None:
        """Load the model (once)."""
        if self._model is None:
            await self._runner.run(self._load)

    async def ready(self) -> bool:
        """True when the model is loaded or loads now."""
        try:
            await self.warmup()
        except BackendError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop the worker thread."""
        self._runner.close()
