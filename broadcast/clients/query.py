"""What a client asks for in its connect URL: ``?last_id=N&topics=a,b&token=...``."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

from broadcast.seams.servers import Scope


@dataclass(frozen=True)
class ConnectQuery:
    """The connect URL's parameters; ``errors`` says what was ignored, and why."""

    last_id: int | None = None
    topics: list[str] = field(default_factory=list)
    token: str | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, scope: Scope) -> ConnectQuery:
        raw = scope.get("query_string", b"")
        if not raw:
            return _EMPTY
        values = parse_qs(raw.decode("latin-1"))
        errors: list[str] = []
        last_id = None
        if "last_id" in values:
            text = values["last_id"][-1]
            try:
                last_id = int(text)
            except ValueError:
                last_id = -1
            if last_id < 0:
                errors.append(f"ignored last_id {text!r}: it must be an integer >= 0")
                last_id = None
        topics = [name for value in values.get("topics", ()) for name in value.split(",") if name]
        tokens = values.get("token")
        return cls(last_id, topics, tokens[-1] if tokens else None, errors)


_EMPTY = ConnectQuery()


def carries_token(scope: Scope) -> bool:
    """Whether the connection names a connect token (``?token=``, not blank)."""
    query = scope.get("query_string", b"")
    return b"token=" in query and ConnectQuery.of(scope).token is not None
