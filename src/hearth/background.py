"""Tasks that run beside the server for its whole life (discovery polls, the request-log
writer, key watching), and the one correct way to stop them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has unwound, so its ``finally`` blocks have run."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
