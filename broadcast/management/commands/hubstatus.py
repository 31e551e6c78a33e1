"""``manage.py hubstatus``: the live server processes and their connection counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from broadcast.models import HubProcess


class Command(BaseCommand):
    help = "Show each server process's connection counts and the live total."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all", action="store_true", help="Also list processes stopped over a day ago."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = HubProcess.objects.all()
        if not options["all"]:
            rows = rows.filter(last_heartbeat__gte=timezone.now() - dt.timedelta(days=1))
        self.stdout.write(
            f"{'process':<32} {'state':<8} {'current':>8} {'peak':>8} {'accepted':>10}"
            "  last heartbeat"
        )
        for row in rows:
            self.stdout.write(
                f"{str(row):<32} {row.state:<8} {row.current:>8} {row.peak:>8} "
                f"{row.total_accepted:>10}  {row.last_heartbeat.isoformat(timespec='seconds')}"
            )
        live = HubProcess.objects.live()
        self.stdout.write(
            f"Live total: {HubProcess.objects.live_total()} client(s) over {live.count()} "
            f"live process(es)."
        )
