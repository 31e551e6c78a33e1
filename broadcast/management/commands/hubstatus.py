"""``manage.py hubstatus``: the live server processes and their connection counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from broadcast.models import HubProcess
from broadcast.stream.counts import TOPIC_COUNTS_KEPT, live_topic_totals


class Command(BaseCommand):
    help = "Show each server process's connection counts and the live total."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all", action="store_true", help="Also list processes stopped over a day ago."
        )
        parser.add_argument(
            "--topics",
            action="store_true",
            help="Also list how many clients subscribe to each topic, per live process and "
            f"in total (each process reports its {TOPIC_COUNTS_KEPT} most subscribed).",
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
        if options["topics"]:
            self._topics(live)
        self.stdout.write(
            f"Live total: {HubProcess.objects.live_total()} client(s) over {live.count()} "
            f"live process(es)."
        )

    def _topics(self, live: Any) -> None:
        totals = live_topic_totals()
        processes = list(live)
        self.stdout.write("")
        if not totals:
            self.stdout.write("No live process has clients subscribed to a topic.")
            self.stdout.write("")
            return
        header = f"{'topic':<40} {'total':>8}"
        for process in processes:
            header += f" {str(process)[-20:]:>20}"
        self.stdout.write(header)
        for topic, total in totals.items():
            line = f"{topic:<40} {total:>8}"
            for process in processes:
                line += f" {(process.topics or {}).get(topic, 0):>20}"
            self.stdout.write(line)
        self.stdout.write("")
