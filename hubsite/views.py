"""The demo page: what a visitor sees of the hub, live."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from broadcast.conf import conf
from broadcast.models import Broadcast, HubProcess

FEED_LENGTH = 20


@require_GET
def index(request):
    """
    The live page. The newest broadcasts are rendered by the server (escaped by the
    template), and the JS client resumes from the newest of them, so the feed has
    neither a gap nor a duplicate where the page load ends and the socket begins.
    """
    recent = []
    # The same rule as the socket: with BROADCAST_REQUIRE_AUTH, anonymous visitors
    # see no broadcasts here either.
    if not conf.BROADCAST_REQUIRE_AUTH or request.user.is_authenticated:
        sent = Broadcast.objects.filter(status=Broadcast.Status.SENT, seq__isnull=False)
        recent = list(sent.order_by("-seq")[:FEED_LENGTH])
    return render(
        request,
        "hubsite/index.html",
        {
            "recent": recent,
            "last_id": recent[0].seq if recent else 0,
            "live_total": HubProcess.objects.live_total(),
            "refresh_ms": int(conf.BROADCAST_HEARTBEAT_SECONDS * 1000),
            "can_publish": request.user.has_perm("broadcast.add_broadcast"),
        },
    )


@never_cache
@require_GET
def live_total(request):
    """Clients connected over every live server process (as of their last heartbeat)."""
    return JsonResponse({"live_total": HubProcess.objects.live_total()})
