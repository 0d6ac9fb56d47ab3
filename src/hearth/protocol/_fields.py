"""Field checks shared by the Ollama and OpenAI translators: each reads one field of a decoded JSON
object and raises BadRequest naming it the way the client wrote it, e.g. "messages[1].content".
"""

from __future__ import annotations

from typing import Any

from hearth.errors import BadRequest
from hearth.protocol.canonical import JSON


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _bad_type(path: str, expected: str) -> BadRequest:
    return BadRequest(f"invalid type for '{path}': expected {expected}", param=path)


def _bad_value(path: str, expected: str) -> BadRequest:
    return BadRequest(f"invalid value for '{path}': expected {expected}", param=path)


def _missing(path: str) -> BadRequest:
    return BadRequest(f"missing field '{path}'", param=path)


def _body(body: object) -> JSON:
    if not isinstance(body, dict):
        raise BadRequest("invalid request body: expected a JSON object")
    return body


def _obj(value: object, path: str) -> JSON:
    if not isinstance(value, dict):
        raise _bad_type(path, "an object")
    return value


def _req_obj(d: JSON, key: str, where: str) -> JSON:
    if d.get(key) is None:
        raise _missing(_path(where, key))
    return _obj(d[key], _path(where, key))


def _opt_obj(d: JSON, key: str, where: str) -> JSON | None:
    value = d.get(key)
    return None if value is None else _obj(value, _path(where, key))


def _req_str(d: JSON, key: str, where: str) -> str:
    value = _opt_str(d, key, where)
    if value is None:
        raise _missing(_path(where, key))
    return value


def _opt_str(d: JSON, key: str, where: str) -> str | None:
    # Null is absent: Go (Ollama) decodes null into a string as "", and OpenAI clients send null for
    # "not set" (the openai SDK does for many fields).
    value = d.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _bad_type(_path(where, key), "a string")


def _bool(d: JSON, key: str, where: str, default: bool) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad_type(_path(where, key), "a boolean")
    return value


def _opt_int(d: JSON, key: str, where: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad_type(_path(where, key), "an integer")
    return value


def _opt_num(d: JSON, key: str, where: str) -> int | float | None:
    value = d.get(key)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise _bad_type(_path(where, key), "a number")


def _list(d: JSON, key: str, where: str) -> list[Any]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_type(_path(where, key), "an array")
    return value


def _str_list(d: JSON, key: str, where: str) -> list[str]:
    items = _list(d, key, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _bad_type(f"{_path(where, key)}[{i}]", "a string")
    return list(items)
