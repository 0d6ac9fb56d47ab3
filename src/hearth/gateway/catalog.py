"""What clients see as "the models": the union over backends, plus aliases.

/api/tags and /v1/models come from the discovery cache (clients poll them often: Home
Assistant every 30 s); /api/ps asks the Ollama backends live, since what is loaded changes
with every request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hearth.backends.base import LoadedModel, ModelInfo
from hearth.backends.ollama import OllamaBackend
from hearth.backends.pool import BackendState, Pool, canonical_name
from hearth.errors import HearthError
from hearth.gateway.auth import Principal
from hearth.gateway.router import Router

# Reported by /api/version when no Ollama backend told us its own. Clients parse it as X.Y.Z.
COMPAT_VERSION = "0.33.0"
_EMPTY_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": None,
    "parameter_size": "",
    "quantization_level": "",
}


def _version_key(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("-")[0].split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


class Catalog:
    def __init__(self, pool: Pool, router: Router) -> None:
        self.pool = pool
        self.router = router

    def version(self) -> str:
        """The oldest Ollama version behind us, so clients never use a feature one lacks."""
        versions = [s.version for s in self.pool.ollama_states() if s.up and s.version]
        return min(versions, key=_version_key) if versions else COMPAT_VERSION

    def _served(self, who: Principal) -> dict[str, tuple[ModelInfo, BackendState]]:
        out: dict[str, tuple[ModelInfo, BackendState]] = {}
        for s in self.pool.states:
            if not s.up or (who.policy.local_only and s.backend.cfg.cloud):
                continue
            for name, info in s.models.items():
                out.setdefault(name, (info, s))
        return out

    def _alias_entries(self, served: dict[str, tuple[ModelInfo, BackendState]]) -> dict[str, ModelInfo]:
        """Aliases whose model (or a fallback) is served somewhere, shown like that model."""
        out: dict[str, ModelInfo] = {}
        for alias in self.router.settings.aliases:
            for target in self.router.targets(alias):
                hit = served.get(target.model) or served.get(canonical_name(target.model, "ollama"))
                if hit is not None:
                    info = hit[0]
                    out[alias] = ModelInfo(alias, info.size, info.digest, info.modified_at, info.details)
                    break
        return out

    def tags(self, who: Principal) -> dict[str, Any]:
        served = self._served(who)
        entries = {name: info for name, (info, _) in served.items()}
        entries.update(self._alias_entries(served))
        return {"models": [_tag(name, info) for name, info in entries.items() if who.may_use(name)]}

    def openai_models(self, who: Principal) -> dict[str, Any]:
        served = self._served(who)
        now = int(time.time())
        data = [
            {"id": name, "object": "model", "created": now, "owned_by": state.name}
            for name, (_, state) in served.items()
        ]
        data += [
            {"id": name, "object": "model", "created": now, "owned_by": "hearth"}
            for name in self._alias_entries(served)
        ]
        return {"object": "list", "data": [d for d in data if who.may_use(str(d["id"]))]}

    async def ps(self, who: Principal) -> dict[str, Any]:
        states = [s for s in self.pool.ollama_states() if s.up]
        results = await asyncio.gather(*(self._ps_one(s) for s in states))
        seen: dict[str, dict[str, Any]] = {}
        for loaded in results:
            for m in loaded:
                seen.setdefault(m.name, m.raw or {"name": m.name, "model": m.name})
        models = sorted(
            (m for name, m in seen.items() if who.may_use(name)),
            key=lambda m: str(m.get("expires_at", "")),
            reverse=True,
        )
        return {"models": models}

    async def _ps_one(self, state: BackendState) -> list[LoadedModel]:
        backend = state.backend
        assert isinstance(backend, OllamaBackend)
        try:
            found = await backend.discover_loaded(self.pool.settings.discovery.timeout)
        except HearthError:
            return list(state.loaded.values())
        state.loaded = {canonical_name(m.name, "ollama"): m for m in found}
        return found


def _tag(name: str, info: ModelInfo) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": info.modified_at or "1970-01-01T00:00:00Z",
        "size": info.size,
        "digest": info.digest,
        "details": info.details or dict(_EMPTY_DETAILS),
    }
