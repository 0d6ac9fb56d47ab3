"""Who is logged in to the hub: passwords, signed session cookies and CSRF tokens.

- Admins log in with a name and a password; the config holds only its Argon2 hash
  (``hub.admins``, printed by ``hearth hub password NAME``). Tenants log in with one of their API
  keys; a key of an admin tenant logs in as admin.
- The session is a cookie signed with ``hub.secret`` (itsdangerous, HMAC-SHA1 over a timestamped
  JSON payload): no table, so it survives restarts and works across Hearth processes sharing the
  secret. It is ``HttpOnly`` and ``SameSite=Strict`` and expires after ``hub.session_hours``.
  It is checked again on every request: a session of a revoked key, of an admin removed from
  the config, or signed before the admin's password changed (the cookie holds a digest of the
  hash it was issued under) is void at once. Logging out clears the cookie.
- Every form carries the session's CSRF token (synchronizer token, compared in constant time),
  and the login form a token from a short-lived signed cookie (double submit), so another site
  can neither post as a logged-in user nor log a visitor in as someone else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

Role = Literal["admin", "tenant"]
COOKIE = "hearth_hub"
LOGIN_COOKIE = "hearth_hub_login"
LOGIN_TOKEN_SECONDS = 3600

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 "low memory") parameters
# Verified against when a name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(hashed: str | None, password: str) -> bool:
    try:
        return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


def password_version(hashed: str) -> str:
    """A digest of a password hash, kept in the session: a new password voids old sessions."""
    return hashlib.sha256(hashed.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Session:
    role: Role
    name: str  # the admin's name, or the tenant's
    key_id: str | None  # the key logged in with; None for a password login
    csrf: str
    version: str = ""  # password_version of an admin's hash

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def csrf_ok(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


def load_secret(configured: str | None, data_dir: Path) -> str:
    """``hub.secret``, or the one kept in ``data_dir/hub-secret`` (made on first use, mode 600)."""
    if configured:
        return configured
    path = data_dir / "hub-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret


class Sessions:
    """Issues and reads the signed cookies."""

    def __init__(self, secret: str, max_age: float) -> None:
        self._session = URLSafeTimedSerializer(secret, salt="hearth-hub-session")
        self._login = URLSafeTimedSerializer(secret, salt="hearth-hub-login")
        self.max_age = max_age

    def issue(self, role: Role, name: str, key_id: str | None, version: str = "") -> tuple[Session, str]:
        s = Session(role, name, key_id, secrets.token_urlsafe(24), version)
        return s, self._session.dumps({"r": s.role, "n": s.name, "k": s.key_id, "c": s.csrf, "v": s.version})

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, if its signature holds and it has not expired."""
        if not cookie:
            return None
        try:
            data: Any = self._session.loads(cookie, max_age=int(self.max_age))
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or data.get("r") not in ("admin", "tenant"):
            return None
        return Session(data["r"], str(data["n"]), data.get("k"), str(data["c"]), str(data.get("v", "")))

    def login_token(self) -> tuple[str, str]:
        """(token for the form, cookie that vouches for it)."""
        token = secrets.token_urlsafe(24)
        return token, self._login.dumps(token)

    def login_token_ok(self, cookie: str | None, token: object) -> bool:
        if not cookie or not isinstance(token, str):
            return False
        try:
            expected = self._login.loads(cookie, max_age=LOGIN_TOKEN_SECONDS)
        except BadSignature:
            return False
        return isinstance(expected, str) and hmac.compare_digest(expected.encode(), token.encode())
