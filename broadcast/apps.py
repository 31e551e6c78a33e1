"""The app's configuration: its system checks, signal handlers and log output are wired here."""

from django.apps import AppConfig


class BroadcastConfig(AppConfig):
    name = "broadcast"
    verbose_name = "Broadcast hub"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from broadcast import checks  # noqa: F401 - registers the system checks
        from broadcast.logdefaults import install_default_handler
        from broadcast.models import Broadcast
        from broadcast.signals import (
            broadcast_requested,
            on_broadcast_requested,
            on_broadcast_saved,
        )

        broadcast_requested.connect(
            on_broadcast_requested, dispatch_uid="broadcast.on_broadcast_requested"
        )
        post_save.connect(
            on_broadcast_saved, sender=Broadcast, dispatch_uid="broadcast.on_broadcast_saved"
        )
        # A user deactivated, deleted or with a new password loses its open connections.
        from broadcast.publishing.revocation import watch_users

        watch_users()
        install_default_handler()
        from broadcast.seams.servers import logs

        logs.install()  # no connect token or key in the servers' own log lines
