"""Chip-build tasks on a Dask distributed cluster (``eo-jepa chips build --scheduler tcp://...``).

The driver (the ``chips build`` process) plans, submits batches of tasks and assembles the store;
the workers read the inputs and write chunks and journal entries straight into the store folder,
so every worker must see that folder, and any local input files, at the same absolute path.

Failures: a lost worker is Dask's business (its batch is rerun elsewhere; a rerun task rewrites
the same chunks and journal entry, so the store is unchanged). A lost scheduler cancels every
future: that ends the build with one sentence, and ``--resume`` (locally or on a new cluster)
runs only the tasks without a journal entry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from eo_jepa.errors import ClusterError


def connect(scheduler: Any) -> Any:
    """A ``distributed.Client`` for an address (bounded by Dask's connect timeout, 30 s by default)."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler
    try:
        return Client(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"Could not connect to the Dask scheduler at {scheduler!r} ({str(exc).splitlines()[0]}); "
            "start one with `dask scheduler` (and workers with `dask worker ADDRESS`) or fix --scheduler."
        ) from None


def run_on_cluster(
    fn: Callable[[Any], list[Any]],
    batches: Sequence[Any],
    scheduler: Any,
    root: str,
    on_done: Callable[[dict[str, Any]], None],
) -> None:
    """``fn(batch)`` for every batch on the cluster; ``on_done`` for each task result as batches finish."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    client = connect(scheduler)
    lost = False
    try:
        futures = client.map(fn, list(batches), pure=False)
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except FutureCancelledError as exc:
                lost = True
                address = getattr(client.scheduler, "address", None) or scheduler
                raise ClusterError(
                    f"The Dask scheduler at {address} was lost mid-build ({exc.reason}); the finished "
                    f"tasks are kept in {root!r}: rerun the same command with --resume, locally or with "
                    "--scheduler on a new cluster."
                ) from None
            for result in results:
                on_done(result)
    finally:
        if client is not scheduler:
            with _silenced("distributed.client") if lost else contextlib.nullcontext():
                client.close()


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    """No records from logger ``name`` (closing a client whose scheduler is gone logs the cancelled
    reconnection attempt as a traceback; the loss has been said already)."""
    logger = logging.getLogger(name)
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled
