"""Alias -> real model + default options -> ordered fallback targets.

Defaults come from two places: ``models.<name>`` (for everyone using that real model) and
``aliases.<name>`` (for the services using the alias), the alias winning. Runner options
(num_ctx, num_batch, num_gpu, main_gpu, use_mmap, num_thread) and keep_alive are enforced:
they override what the client sent, because two apps sending different num_ctx make Ollama
reload the model on every switch. Sampling options (temperature, top_p, ...) are defaults only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hearth.protocol.canonical import RUNNER_OPTIONS
from hearth.settings import Settings


@dataclass(slots=True, frozen=True)
class Target:
    """One real model to try, with the options to apply to the client's request."""

    model: str
    alias: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # client may override
    enforced: dict[str, Any] = field(default_factory=dict)  # client may not
    keep_alive: str | int | float | None = None

    def options(self, client: dict[str, Any] | None) -> dict[str, Any]:
        if not self.defaults and not self.enforced:
            return client or {}
        return {**self.defaults, **(client or {}), **self.enforced}

    @property
    def changes_request(self) -> bool:
        return bool(self.alias or self.defaults or self.enforced or self.keep_alive is not None)


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def is_alias(self, name: str) -> bool:
        return name in self.settings.aliases

    def targets(self, name: str) -> list[Target]:
        """The primary target for ``name``, then each fallback's, without repeats or cycles."""
        out: list[Target] = []
        self._expand(name, out, set())
        return out

    def _expand(self, name: str, out: list[Target], seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        alias = self.settings.aliases.get(name)
        if alias is None:
            out.append(self._target(name, None))
            return
        out.append(self._target(alias.model, name))
        for fb in alias.fallbacks:
            self._expand(fb, out, seen)

    def _target(self, model: str, alias_name: str | None) -> Target:
        opts: dict[str, Any] = {}
        keep_alive = None
        per_model = self.settings.models.get(model)
        if per_model is not None:
            opts.update(per_model.options)
            keep_alive = per_model.keep_alive
        if alias_name is not None:
            alias = self.settings.aliases[alias_name]
            opts.update(alias.options)
            if alias.keep_alive is not None:
                keep_alive = alias.keep_alive
        enforced = {k: v for k, v in opts.items() if k in RUNNER_OPTIONS}
        defaults = {k: v for k, v in opts.items() if k not in RUNNER_OPTIONS}
        return Target(model, alias_name, defaults, enforced, keep_alive)
