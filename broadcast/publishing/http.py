"""
``POST /broadcast/publish``: publishing for services that are not Django.

    curl -X POST https://example.com/broadcast/publish \\
      -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
      -d '{"type": "announcement", "payload": {"text": "Deploy at 18:00"}}'

The keys are BROADCAST_API_KEYS; with none, the endpoint is a 404. The body is judged
as :func:`broadcast.publish` judges its arguments, and the answers are 201 (the
envelope), 400, 401, 405, 413 and 503 (the row is then marked failed), each with
``{"error": ...}`` but the first.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from broadcast.conf import conf
from broadcast.protocol import InvalidBroadcast, PayloadTooLarge
from broadcast.publishing.api import PublishFailed, publish

logger = logging.getLogger(__name__)

FIELDS = {"type", "payload", "topic", "persist"}
# Room in the body beyond the envelope's limit, for the field names and whitespace.
BODY_SLACK_BYTES = 1024


def body_limit() -> int:
    """The largest body read: twice the envelope's limit, since a body may be indented."""
    return 2 * conf.BROADCAST_MAX_MESSAGE_BYTES + BODY_SLACK_BYTES


@csrf_exempt  # no cookies: the bearer key is the credential
@never_cache
@transaction.non_atomic_requests  # publish() sends on commit; ATOMIC_REQUESTS would defer it
def publish_view(request: HttpRequest) -> JsonResponse:
    keys = conf.BROADCAST_API_KEYS
    if not keys:
        raise Http404("The HTTP publish API is off (BROADCAST_API_KEYS is empty).")
    if request.method != "POST":
        response = _error(405, "use POST")
        response["Allow"] = "POST"
        return response
    key_number = _key_number(request.headers.get("Authorization", ""), keys)
    if key_number is None:
        response = _error(401, "a valid 'Authorization: Bearer <key>' header is required")
        response["WWW-Authenticate"] = 'Bearer realm="broadcast"'
        return response
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
    except (PublishFailed, ImproperlyConfigured) as exc:
        return _error(503, str(exc))
    logger.info("HTTP publish with API key #%s: id=%s", key_number, envelope["id"])
    return JsonResponse(envelope, status=201)


def _key_number(header: str, keys: list[str]) -> int | None:
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


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)
