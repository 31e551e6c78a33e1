"""
``POST /broadcast/publish``: publishing for services that are not Django.

    curl -X POST https://example.com/broadcast/publish \\
      -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
      -d '{"type": "announcement", "payload": {"text": "Deploy at 18:00"}}'

The keys are BROADCAST_API_KEYS; with none, the endpoint is a 404. The body is judged
as :func:`broadcast.publish` judges its arguments, and the answers are 201 (the
envelope), 400, 401, 404, 405, 408, 413, 500 and 503 (with ``Retry-After`` when the
database or the channel layer is down; a stored row is then marked failed), all JSON,
``{"error": ...}`` but the first. Under ASGI, :class:`~broadcast.publishing.guard.PublishGuard`
judges the key and the length before the body is read.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from broadcast.conf import conf
from broadcast.protocol import InvalidBroadcast, PayloadTooLarge
from broadcast.publishing.api import PublishFailed, publish

logger = logging.getLogger(__name__)

FIELDS = {"type", "payload", "topic", "persist"}
BEARER_CHALLENGE = 'Bearer realm="broadcast"'
# What a 503 for an outage tells the client to wait before it retries.
RETRY_AFTER_SECONDS = 5
# Room in the body beyond the envelope's limit, for the field names and whitespace.
BODY_SLACK_BYTES = 1024


def body_limit() -> int:
    """The largest body read: twice the envelope's limit, since a body may be indented."""
    return 2 * conf.BROADCAST_MAX_MESSAGE_BYTES + BODY_SLACK_BYTES


@csrf_exempt  # no cookies: the bearer key is the credential
@never_cache
@transaction.non_atomic_requests  # publish() sends on commit; ATOMIC_REQUESTS would defer it
def publish_view(request: HttpRequest) -> JsonResponse:
    try:
        return _publish(request)
    except Exception:
        # A bug: Django would answer its HTML error page, which no client of this API reads.
        logger.exception("HTTP publish failed")
        return _error(500, "internal error; the server's log has the details")


def _publish(request: HttpRequest) -> JsonResponse:
    keys = conf.BROADCAST_API_KEYS
    if not keys:
        return _error(404, "the HTTP publish API is off (BROADCAST_API_KEYS is empty)")
    if request.method != "POST":
        response = _error(405, "use POST")
        response["Allow"] = "POST"
        return response
    number = key_number(request.headers.get("Authorization", ""), keys)
    if number is None:
        response = _error(401, "a valid 'Authorization: Bearer <key>' header is required")
        response["WWW-Authenticate"] = BEARER_CHALLENGE
        return response
    _warn_if_unguarded(request)
    fields, problem = _read_body(request)
    if problem is not None:
        return problem
    try:
        envelope = publish(
            fields["type"],
            fields.get("payload"),
            topic=fields.get("topic"),
            persist=fields.get("persist", True),
        )
    except PayloadTooLarge as exc:
        return _error(413, str(exc))
    except InvalidBroadcast as exc:
        return _error(400, str(exc))
    except PublishFailed as exc:  # the database or the channel layer: worth a retry
        response = _error(503, str(exc))
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    except ImproperlyConfigured as exc:
        return _error(503, str(exc))
    logger.info("HTTP publish with API key #%s: id=%s", number, envelope["id"])
    return JsonResponse(envelope, status=201)


def key_number(header: str, keys: list[str]) -> int | None:
    """Which key (1-based, for logs) the header carries, compared in constant time."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return None
    found = None
    for number, key in enumerate(keys, start=1):
        # Every key is compared, so the time taken does not tell which one matched.
        if hmac.compare_digest(given.strip().encode(), key.encode()):
            found = number
    return found


def _read_body(request: HttpRequest) -> tuple[dict[str, Any], JsonResponse | None]:
    limit = body_limit()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return {}, _error(413, f"the body is over {limit} bytes")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        return {}, _error(413, f"the body is over {limit} bytes")
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, _error(400, "the body is not JSON")
    if not isinstance(fields, dict):
        return {}, _error(400, 'the body must be a JSON object, e.g. {"type": "announcement"}')
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        return {}, _error(400, f"unknown field(s) {', '.join(unknown)}; allowed: {sorted(FIELDS)}")
    if "type" not in fields:
        return {}, _error(400, "the body needs a 'type'")
    if not isinstance(fields.get("persist", True), bool):
        return {}, _error(400, "'persist' must be true or false")
    return fields, None


_warned = False


def _warn_if_unguarded(request: HttpRequest) -> None:
    """Once a process: under ASGI without the guard, Django read the body before this view."""
    global _warned
    scope = getattr(request, "scope", None)
    if _warned or scope is None or scope.get("broadcast.guarded"):
        return
    _warned = True
    logger.warning(
        "The HTTP publish API's body was read before its key was checked: wrap the "
        "project's HTTP application in broadcast.routing.PublishGuard (docs/security.md)"
    )


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)
