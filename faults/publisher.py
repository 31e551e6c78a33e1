"""
The sequencer's publisher and database reader: a process of its own with the site's
environment (like an app server or a worker that publishes), driven by one JSON
request a line on stdin, one JSON answer a line on stdout.

    {"op": "publish", "count": 5, "persist": true, "size": 100, "topic": null}
    {"op": "publish", "count": 5, "persist": false, "size": 9, "at_once": true}
    {"op": "newest"}        {"op": "rows"}        {"op": "live_total"}
    {"op": "token", "user": "fault.u0"}
    {"op": "revoke", "user": "fault.u0", "how": "password" | "deactivate" | "disconnect"}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")
    import django

    django.setup()
    from harness.constants import apply

    apply()  # the run's HUB_CONSTANTS, as its servers have them
    from broadcast import BroadcastError
    from broadcast.history import newest_id
    from broadcast.models import Broadcast, HubProcess

    requests = 0
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "publish":
            requests += 1
            # The oracle checks the order within one request's ephemeral broadcasts.
            tag = f"{os.getpid()}.{requests}"
            at_once = bool(request.get("at_once"))
            payloads = [{"n": n, "pad": "x" * request["size"], "burst": tag, "at_once": at_once}
                        for n in range(request["count"])]  # fmt: skip
            if at_once:
                results = asyncio.run(publish_at_once(payloads, request))
            else:
                results = [publish_one(payload, request) for payload in payloads]
            errors = [r for r in results if isinstance(r, BaseException)]
            for error in errors:
                if not isinstance(error, BroadcastError):
                    raise error
            answer = {
                "ids": [r["id"] for r in results if not isinstance(r, BaseException)],
                "failures": len(errors),
            }
        elif request["op"] == "newest":
            answer = {"newest": newest_id()}
        elif request["op"] == "token":
            answer = {"token": token_for(request["user"])}
        elif request["op"] == "revoke":
            answer = revoke(request["user"], request["how"])
        elif request["op"] == "live_total":
            answer = {"live_total": HubProcess.objects.live_total()}
        elif request["op"] == "rows":
            answer = {
                "rows": list(
                    Broadcast.objects.order_by("pk").values_list("seq", "status", "type", "topic")
                )
            }
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def token_for(name: str) -> str:
    """A connect token for the user ``name`` (created the first time)."""
    from django.contrib.auth.models import User

    from broadcast import connect_token

    user, _ = User.objects.get_or_create(username=name)
    return connect_token(user, ttl=3600)


def revoke(name: str, how: str) -> dict:
    """
    Take the user's access back; ``sent``: whether the revocation went out, and
    ``after``: its id (nothing with a later id may reach the user's connections).
    A deactivated user is active again at once: its connections stay closed.
    """
    from django.contrib.auth.models import User

    from broadcast import BroadcastError
    from broadcast.history import newest_id
    from broadcast.models import Broadcast
    from broadcast.publishing.revocation import disconnect_user

    user, _ = User.objects.get_or_create(username=name)
    before = newest_id()
    if how == "password":
        user.set_password(f"changed-{before}")
        user.save()
    elif how == "deactivate":
        user.is_active = False
        user.save()
        user.is_active = True
        user.save()
    else:
        try:
            disconnect_user(user)
        except BroadcastError:
            return {"sent": False, "after": before}
    revocation = (
        Broadcast.objects.filter(type="hub.revoke", payload__owner=str(user.pk), seq__gt=before)
        .order_by("seq")
        .values_list("seq", "status")
        .first()
    )
    if revocation is None or revocation[1] != "sent":
        return {"sent": False, "after": before}
    return {"sent": True, "after": revocation[0]}


def publish_one(payload: dict, request: dict) -> dict | BaseException:
    from broadcast import BroadcastError, publish

    try:
        return publish("fault.seq", payload, persist=request["persist"], topic=request.get("topic"))
    except BroadcastError as exc:
        return exc


async def publish_at_once(payloads: list[dict], request: dict) -> list:
    """Ephemeral publishes issued together, as one process's concurrent requests would."""
    from broadcast import apublish

    return await asyncio.gather(
        *(apublish("fault.seq", p, persist=False, topic=request.get("topic")) for p in payloads),
        return_exceptions=True,
    )


if __name__ == "__main__":
    main()
