"""Preparing many studies at once: content hashing, then decoding of cache misses in parallel workers."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fedaaa.common.cache import InputCache, Outcome
from fedaaa.common.io import StudyInfo
from fedaaa.common.io.walk import safe_resolve
from fedaaa.common.preprocess import PreprocessSettings

Progress = Callable[[int, int], None]  # (studies done, studies in all)


@dataclass
class Prepared:
    """One study's cache entry: ``key`` and ``info`` when usable, ``error`` (one line) when refused."""

    path: Path
    key: str
    info: StudyInfo | None = None
    error: str | None = None
    where: str = ""  # the file inside the study a refusal points to, if any
    label: bool = False  # the entry holds the study's aorta label
    label_error: str = ""  # why the label named for it could not be used


def default_workers() -> int:
    """Up to 4 decoding processes, leaving one core to the caller (1 on a 2-core machine, where a
    spawned worker's start-up, about 4 s to import torch and MONAI, costs more than it saves)."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the workers are the parallelism


def _prepare(settings: PreprocessSettings, cache_dir: str, path: Path, key: str, mask: Path | None) -> Outcome:
    return InputCache(settings, Path(cache_dir), use_index=False).prepare(path, key, mask)[1]


def _result(path: Path, key: str, outcome: Outcome) -> Prepared:
    return Prepared(
        path,
        key,
        info=outcome.info,
        error=outcome.error,
        where=outcome.where,
        label=outcome.label,
        label_error=outcome.label_error,
    )


def prepare_studies(
    paths: list[Path],
    cache: InputCache,
    workers: int | None = None,
    progress: Progress | None = None,
    *,
    rehash: bool = False,
    masks: list[Path | None] | None = None,
) -> list[Prepared]:
    """Cache entries for ``paths`` (in order). A study unchanged since the cache's content index saw it
    is keyed without reading its bytes (``rehash`` hashes every study and refreshes the index); hits are
    then only loaded; misses are decoded, in ``workers`` processes when there are several, and counted in
    ``cache.decoded``. ``masks`` (aligned with ``paths``) names each study's aorta label file, if any."""
    masks = list(masks) if masks is not None else [None] * len(paths)
    workers = default_workers() if workers is None else max(1, workers)
    total, done = len(paths), 0
    results: list[Prepared | None] = [None] * total
    misses = []
    for i, path in enumerate(paths):
        key, outcome = "", None
        path = safe_resolve(path)  # a link loop is refused by prepare(), not raised here
        try:
            key = cache.key(path, rehash=rehash, mask=masks[i])
            outcome = cache.record(key)
        except OSError:
            outcome = None
        if outcome is None and key:
            misses.append((i, path, key))
            continue
        if outcome is None:  # unreadable: let prepare() word the refusal
            key, outcome = cache.prepare(path, mask=masks[i])
        results[i] = _result(path, key, outcome)
        done += 1
        if progress:
            progress(done, total)
    cache.save_index()
    if len(misses) > 1 and workers > 1:
        ctx = multiprocessing.get_context("spawn")  # safe inside threaded hosts (Flower, Ray)
        with ProcessPoolExecutor(min(workers, len(misses)), mp_context=ctx, initializer=_worker_init) as pool:
            futures = {
                pool.submit(_prepare, cache.settings, str(cache.dir), path, key, masks[i]): (i, path, key)
                for i, path, key in misses
            }
            for future in as_completed(futures):
                i, path, key = futures[future]
                results[i] = _result(path, key, future.result())
                cache.decoded += 1
                done += 1
                if progress:
                    progress(done, total)
    else:
        for i, path, key in misses:
            results[i] = _result(path, key, cache.prepare(path, key, masks[i])[1])
            done += 1
            if progress:
                progress(done, total)
    return results  # type: ignore[return-value]
