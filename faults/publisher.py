"""
The sequencer's publisher and database reader: a process of its own with the site's
environment (like an app server or a worker that publishes), driven by one JSON
request a line on stdin, one JSON answer a line on stdout.

    {"op": "publish", "count": 5, "persist": true, "size": 100, "topic": null}
    {"op": "newest"}        {"op": "rows"}        {"op": "live_total"}
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsite.settings")
    import django

    django.setup()
    from broadcast import BroadcastError, publish
    from broadcast.history import newest_id
    from broadcast.models import Broadcast, HubProcess

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "publish":
            ids, failures = [], 0
            for n in range(request["count"]):
                try:
                    envelope = publish(
                        "fault.seq", {"n": n, "pad": "x" * request["size"]},
                        persist=request["persist"], topic=request.get("topic"),
                    )  # fmt: skip
                    ids.append(envelope["id"])
                except BroadcastError:
                    failures += 1
            answer = {"ids": ids, "failures": failures}
        elif request["op"] == "newest":
            answer = {"newest": newest_id()}
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


if __name__ == "__main__":
    main()
