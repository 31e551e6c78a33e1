"""``/metrics`` (Prometheus) and ``/healthz`` (JSON), each switchable in settings."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from broadcast import metrics
from broadcast.conf import conf
from broadcast.history import newest_id
from broadcast.models import HubProcess
from broadcast.publishing.deadline import database_deadline
from broadcast.seams.layers import pubsub
from broadcast.stream.hub import running_hub
from broadcast.stream.layer import load_layer
from broadcast.stream.relay import RELAY_PREFIX

logger = logging.getLogger(__name__)

LAYER_TIMEOUT = 3.0


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not conf.BROADCAST_METRICS_ENABLED:
        raise Http404("Metrics are switched off (BROADCAST_METRICS_ENABLED).")
    token = conf.BROADCAST_METRICS_TOKEN
    if token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("A bearer token is required.\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)


def _check_database() -> dict[str, Any]:
    """
    What publishing and resuming need: the broadcasts table read (a lock that blocks
    reading it, such as ``LOCK TABLE``, holds every publish) and the process rows,
    each in time.
    """
    started = time.perf_counter()
    try:
        with database_deadline(LAYER_TIMEOUT):
            newest_id()
            live = HubProcess.objects.live_total()
    finally:
        connection.close()  # a pool thread, not a request thread: nothing else closes it
    return {"ok": True, "ms": _ms(started), "live_connections": live}


async def _check_layer() -> dict[str, Any]:
    """A round trip through the channel layer: what a broadcast needs to get anywhere."""
    started = time.perf_counter()
    layer = load_layer()
    # The relay's prefix: channels-redis serves every process-local channel of one
    # prefix from one Redis list, under one receive lock per layer. With a prefix of
    # its own, this receive would wait behind the relay's blocking pop on another list.
    pubsub.quiet_reader(layer)  # a check before the first client starts the reader
    channel = await layer.new_channel(prefix=RELAY_PREFIX)
    await layer.send(channel, {"type": "healthz"})
    await layer.receive(channel)
    return {"ok": True, "ms": _ms(started), "backend": type(layer).__name__}


async def _check_layer_with_retry() -> dict[str, Any]:
    # One retry: after Redis restarts, the first command on each pooled connection
    # fails ("Connection closed by server") and the next one reconnects. Only a
    # second failure means the layer is down.
    try:
        return await asyncio.wait_for(_check_layer(), LAYER_TIMEOUT)
    except TimeoutError as exc:
        return _failure(exc, "channel layer")
    except Exception:
        pass
    try:
        return await asyncio.wait_for(_check_layer(), LAYER_TIMEOUT)
    except Exception as exc:
        return _failure(exc, "channel layer")


def _check_relay() -> dict[str, Any]:
    """
    This process's relay: failing while it restarts after an error, or while it holds
    the stream at a gap the database cannot fill yet (with how long it has held).
    """
    hub = running_hub()
    if hub is None:
        return {"ok": True, "state": "idle", "restarts": 0}
    state = hub.relay_state
    check: dict[str, Any] = {
        "ok": state not in ("restarting", "holding"),
        "state": state,
        "restarts": hub.relay.restarts,
    }
    since = hub.relay.holding_since
    if since is not None:
        check["holding_seconds"] = round(time.monotonic() - since, 1)
    return check


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _failure(exc: BaseException, check: str) -> dict[str, Any]:
    # The exception's text names hosts, users and databases: it goes to the log, and
    # anyone who can reach the endpoint gets the kind of failure only.
    slow = isinstance(exc, TimeoutError) or type(exc.__cause__).__name__ == "QueryCanceled"
    reason = "timed out" if slow else type(exc).__name__
    logger.warning("Health check of the %s failed: %s: %s", check, type(exc).__name__, exc)
    return {"ok": False, "error": reason}


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer, 503 otherwise."""
    if not conf.BROADCAST_HEALTHZ_ENABLED:
        raise Http404("The health check is switched off (BROADCAST_HEALTHZ_ENABLED).")
    checks: dict[str, Any] = {}
    try:
        database = await asyncio.wait_for(
            sync_to_async(_check_database, thread_sensitive=False)(), LAYER_TIMEOUT
        )
    except Exception as exc:
        database = _failure(exc, "database")
    live = database.pop("live_connections", None)
    checks["database"] = database
    checks["channel_layer"] = await _check_layer_with_retry()
    checks["relay"] = _check_relay()
    healthy = all(check["ok"] for check in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "live_connections": live, **checks}
    return JsonResponse(body, status=200 if healthy else 503)
