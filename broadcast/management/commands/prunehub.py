"""``manage.py prunehub``: delete what is older than the retention period."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from broadcast.conf import conf
from broadcast.models import Broadcast, ConnectionSample, HubProcess


class Command(BaseCommand):
    help = (
        "Delete broadcasts, connection samples and stopped or dead process rows older "
        "than BROADCAST_RETENTION_DAYS (or --days). Run it daily, from cron or a timer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=float,
            help="Keep this many days instead of BROADCAST_RETENTION_DAYS.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else conf.BROADCAST_RETENTION_DAYS
        if days <= 0:
            raise CommandError("--days must be a positive number of days.")
        if conf.cuts_into_history(days):
            raise CommandError(
                f"Keeping {days:g} day(s) would delete broadcasts that clients can still "
                f"resume from (BROADCAST_HISTORY_TTL is {conf.BROADCAST_HISTORY_TTL:g} s)."
            )
        cutoff = timezone.now() - dt.timedelta(days=days)
        # A process row goes once it has stopped, or stopped heart-beating, before the
        # cutoff; its samples go with it.
        processes = HubProcess.objects.filter(last_heartbeat__lt=cutoff)
        targets = [
            ("broadcast(s)", Broadcast.objects.filter(created_at__lt=cutoff)),
            ("connection sample(s)", ConnectionSample.objects.filter(taken_at__lt=cutoff)),
            ("process row(s)", processes),
        ]
        verb = "Would delete" if options["dry_run"] else "Deleted"
        with transaction.atomic():
            for label, queryset in targets:
                if options["dry_run"]:
                    count = queryset.count()
                else:
                    count = queryset.delete()[1].get(queryset.model._meta.label, 0)
                self.stdout.write(f"{verb} {count} {label} older than {cutoff:%Y-%m-%d %H:%M} UTC.")
