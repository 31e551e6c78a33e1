"""The hub's records: broadcasts with their delivery ids, server processes, connection samples."""

from __future__ import annotations

import datetime as dt
import json

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from broadcast.conf import conf
from broadcast.protocol import TOPIC_RE, TYPE_RE


class BroadcastQuerySet(models.QuerySet["Broadcast"]):
    def unsent(self, *, stale_after: float = 60.0) -> BroadcastQuerySet:
        """
        Rows to send again: failed ones, and pending ones with no id that are older
        than ``stale_after`` seconds (their publisher died between commit and send).
        """
        cutoff = timezone.now() - dt.timedelta(seconds=stale_after)
        return self.filter(
            models.Q(status=Broadcast.Status.FAILED)
            | models.Q(status=Broadcast.Status.PENDING, seq__isnull=True, created_at__lt=cutoff)
        )


class Broadcast(models.Model):
    """
    A persisted broadcast: what was published, by whom, and whether it was sent.

    ``seq`` is the id clients see in the envelope. It is assigned when the broadcast
    is sent, under the send lock, so that delivery order and id order are the same
    even with concurrent publishers (docs/design-notes.md).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        # Failed with its id burnt, then sent again as a new row (a new id): the old
        # row keeps its id so that history has no hole, and is never sent again.
        RESENT = "resent", "resent as a new broadcast"

    seq = models.PositiveBigIntegerField(
        "delivery id", null=True, blank=True, unique=True, editable=False
    )
    type = models.CharField(
        max_length=64,
        validators=[RegexValidator(TYPE_RE, "1-64 characters of letters, digits and '_.:-'.")],
    )
    # Blank for the global stream (every client), not NULL: Django's convention for text.
    topic = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[RegexValidator(TOPIC_RE, "1-64 characters of letters, digits and '_.:-'.")],
        help_text="Only clients subscribed to this topic receive it; blank: every client.",
    )
    payload = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, editable=False
    )
    error = models.TextField(blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Not a field: publish() sets it on the rows it sends itself, so that the
    # post_save receiver (which sends rows saved elsewhere, the admin's) skips them.
    sent_by_publish = False

    objects = BroadcastQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        label = f"#{self.seq}" if self.seq is not None else f"row {self.pk}"
        where = f" on {self.topic}" if self.topic else ""
        return f"{self.type}{where} ({label}, {self.status})"

    @property
    def topic_or_none(self) -> str | None:
        """The topic as the envelope and publish() name it: None for the global stream."""
        return self.topic or None

    @property
    def payload_json(self) -> str:
        """The payload as the envelope carries it (for pages; escape it there)."""
        return json.dumps(
            self.payload, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":")
        )


class HubProcessQuerySet(models.QuerySet["HubProcess"]):
    def live(self) -> HubProcessQuerySet:
        """Rows of processes that are running: not stopped, heartbeat still fresh."""
        window = conf.live_window
        cutoff = timezone.now() - dt.timedelta(seconds=window)
        return self.filter(stopped_at__isnull=True, last_heartbeat__gte=cutoff)

    def live_total(self) -> int:
        """Clients connected right now, over every live server process."""
        return self.live().aggregate(total=models.Sum("current"))["total"] or 0


class HubProcess(models.Model):
    """
    One running (or once running) server process and its connection counts.

    The process keeps its counts in memory and writes this row on a heartbeat, not
    on every connect; a process killed without warning simply stops refreshing
    ``last_heartbeat`` and drops out of :meth:`HubProcessQuerySet.live`.
    """

    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField()
    current = models.PositiveIntegerField(default=0)
    # {topic: subscribed clients} of this process, the most subscribed first, at most
    # TOPIC_COUNTS_KEPT of them (counts.py): per-user topics can number in millions.
    topics = models.JSONField(default=dict, blank=True)
    peak = models.PositiveIntegerField(default=0)
    total_accepted = models.PositiveBigIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = HubProcessQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "hub process"
        verbose_name_plural = "hub processes"
        indexes = [models.Index(fields=["last_heartbeat"])]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    @property
    def is_live(self) -> bool:
        if self.stopped_at is not None:
            return False
        window = conf.live_window
        return self.last_heartbeat >= timezone.now() - dt.timedelta(seconds=window)

    @property
    def state(self) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "live" if self.is_live else "stale"


class ConnectionSample(models.Model):
    """
    One process's connection count at one moment, for the dashboard's chart.

    Written on the heartbeat, at most once a minute per process;
    ``manage.py prunehub`` deletes samples past BROADCAST_RETENTION_DAYS.
    """

    process = models.ForeignKey(HubProcess, on_delete=models.CASCADE, related_name="samples")
    taken_at = models.DateTimeField(db_index=True)
    current = models.PositiveIntegerField()

    class Meta:
        ordering = ["taken_at"]

    def __str__(self) -> str:
        return f"{self.process} {self.current} at {self.taken_at.isoformat()}"
