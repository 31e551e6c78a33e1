"""``manage.py broadcast``: publish one broadcast from the command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from broadcast.models import Broadcast
from broadcast.protocol import BroadcastError, prepare
from broadcast.publishing.api import publish, resend
from broadcast.publishing.send import describe
from broadcast.stream.layer import is_process_local, load_layer, needs_shared_layer


class Command(BaseCommand):
    help = (
        "Publish a broadcast to every connected client (or a topic's subscribers), or "
        "resend failed ones. "
        "Needs a channel layer that reaches the server processes (channels-redis)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("type", nargs="?", help="The broadcast type, e.g. announcement.")
        parser.add_argument(
            "payload",
            nargs="?",
            help="The payload as JSON; '-' reads it from standard input. Default: null.",
        )
        parser.add_argument("--file", metavar="PATH", help="Read the payload JSON from a file.")
        parser.add_argument(
            "--topic",
            metavar="TOPIC",
            help="Send only to the clients subscribed to TOPIC (default: every client).",
        )
        parser.add_argument(
            "--no-persist",
            action="store_true",
            help="Send without writing a Broadcast row (the envelope's id is null).",
        )
        parser.add_argument("--resend", type=int, metavar="ROW", help="Resend one Broadcast row.")
        parser.add_argument(
            "--resend-failed",
            action="store_true",
            help="Resend every failed Broadcast row, and pending ones a dead publisher left.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with _app_logging(verbose=options["verbosity"] >= 2):
            try:
                self._handle(options)
            except DatabaseError as exc:  # one line, as for every other failure
                raise CommandError(f"The database cannot be reached: {describe(exc)}") from exc

    def _handle(self, options: dict[str, Any]) -> None:
        if options["resend"] is not None or options["resend_failed"]:
            self._require_shared_layer()
            self._resend(options)
            return
        if not options["type"]:
            raise CommandError("Give a broadcast TYPE (or --resend ROW / --resend-failed).")
        payload = self._payload(options)
        try:
            # What the user typed is judged first.
            prepare(options["type"], payload, topic=options["topic"])
        except BroadcastError as exc:
            raise CommandError(str(exc)) from exc
        self._require_shared_layer()
        try:
            envelope = publish(
                options["type"],
                payload,
                topic=options["topic"],
                persist=not options["no_persist"],
            )
        except BroadcastError as exc:
            raise CommandError(str(exc)) from exc
        on = f" topic={envelope['topic']!r}" if envelope["topic"] is not None else ""
        if envelope["id"] is None:
            self.stdout.write(
                self.style.SUCCESS(f"Sent ephemeral {envelope['type']!r} broadcast{on}.")
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Sent broadcast id={envelope['id']} type={envelope['type']!r}{on}."
                )
            )

    def _require_shared_layer(self) -> None:
        try:
            layer = load_layer()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if is_process_local(layer):
            raise CommandError(
                needs_shared_layer("This command cannot reach the server, another process")
            )

    def _payload(self, options: dict[str, Any]) -> Any:
        source = options["payload"]
        if options["file"] and source is not None:
            raise CommandError("Give the payload either as an argument or with --file, not both.")
        if options["file"]:
            try:
                with open(options["file"], encoding="utf-8") as handle:
                    text, origin = handle.read(), options["file"]
            except OSError as exc:
                raise CommandError(
                    f"Cannot read --file {options['file']!r}: {exc.strerror}."
                ) from exc
        elif source == "-":
            text, origin = sys.stdin.read(), "standard input"
        elif source is None:
            return None
        else:
            text, origin = source, "the payload argument"
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CommandError(f"Invalid JSON in {origin}: {exc}.") from exc

    def _resend(self, options: dict[str, Any]) -> None:
        if options["type"] or options["payload"] or options["file"]:
            raise CommandError("--resend and --resend-failed take no TYPE or payload.")
        if options["resend"] is not None:
            try:
                rows = [Broadcast.objects.get(pk=options["resend"])]
            except Broadcast.DoesNotExist:
                raise CommandError(f"No Broadcast row {options['resend']}.") from None
        else:
            rows = list(Broadcast.objects.unsent().order_by("pk"))
            if not rows:
                self.stdout.write("No failed broadcasts to resend.")
                return
        failures = 0
        for number, row in enumerate(rows, 1):
            try:
                envelope = resend(row)
            except BroadcastError as exc:
                failures += 1
                self.stderr.write(f"[{number}/{len(rows)}] row {row.pk}: {exc}")
            else:
                self.stdout.write(
                    f"[{number}/{len(rows)}] row {row.pk} sent as id={envelope['id']}."
                )
        if failures:
            raise CommandError(f"{failures} of {len(rows)} broadcast(s) could not be resent.")
        self.stdout.write(self.style.SUCCESS(f"Resent {len(rows)} broadcast(s)."))


@contextlib.contextmanager
def _app_logging(*, verbose: bool) -> Iterator[None]:
    """
    The command reports outcomes itself, in one line; the app's own log lines (a
    warning for the same failure) would repeat it, so they show only at -v 2.
    """
    logger = logging.getLogger("broadcast")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
