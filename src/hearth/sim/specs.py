"""What the simulator is made of: a server, its models, the requests sent to it.

Times are seconds and sizes are gigabytes (1e9 bytes), as the protocol notes and model cards
give them. These are plain data; the behaviour lives in ``ollama`` and the drivers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Priority = Literal["interactive", "batch"]


@dataclass(slots=True, frozen=True)
class ModelSpec:
    """One model as the server holds it."""

    name: str
    size_gb: float  # file size, as /api/tags reports it
    kv_gb: float = 0.5  # KV cache and batch surcharge at the server's num_ctx, added when loaded
    tokens_per_s: float = 10.0  # generation speed of one request
    prompt_tokens_per_s: float = 100.0  # prompt evaluation speed

    @property
    def memory_gb(self) -> float:
        """What the model takes once loaded (what /api/ps reports as size)."""
        return self.size_gb + self.kv_gb


@dataclass(slots=True, frozen=True)
class ServerSpec:
    """One Ollama server: its memory and the OLLAMA_* settings that shape its scheduler."""

    memory_gb: float = 48.0
    max_loaded_models: int = 3  # OLLAMA_MAX_LOADED_MODELS
    num_parallel: int = 1  # OLLAMA_NUM_PARALLEL: slots per loaded model
    max_queue: int = 512  # OLLAMA_MAX_QUEUE: pending requests beyond this get 503 at once
    keep_alive_s: float = 300.0  # OLLAMA_KEEP_ALIVE
    load_fixed_s: float = 2.0  # load time = load_fixed_s + size_gb / load_gbps
    load_gbps: float = 2.0
    fit_fraction: float = 0.8  # a model loads alongside others only if it needs <= this of free memory
    # Runners' worth of compute the box has. None: every runner generates at its model's full
    # speed however many run at once. A number C: k requests running at once each go at
    # min(1, C / k) of their speed, as runners on one CPU share its cores and memory bandwidth
    # (the discrete-event simulator only).
    compute_runners: float | None = None

    def load_seconds(self, model: ModelSpec) -> float:
        return self.load_fixed_s + model.size_gb / self.load_gbps

    def fits(self, memory_gb: float, loaded_gb: float) -> bool:
        """Ollama's fit rule: beside models taking ``loaded_gb``, one needing ``memory_gb``
        loads only if that is at most ``fit_fraction`` of the memory they leave free."""
        return memory_gb <= self.fit_fraction * (self.memory_gb - loaded_gb)


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request as the server sees it. The ``*_at`` fields are filled in as it goes."""

    id: int
    model: str
    prompt_tokens: int
    output_tokens: int
    keep_alive_s: float | None = None  # None: the server's default
    submitted_at: float | None = None
    started_at: float | None = None  # got a slot on a loaded runner: prompt evaluation begins
    finished_at: float | None = None
    rejected: str | None = None  # why the server refused it (queue full)
    tags: dict[str, object] = field(default_factory=dict)  # the driver's own bookkeeping
