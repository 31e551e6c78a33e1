"""The Django admin for broadcasts: publishing from a form, and the hub's dashboard."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse

from broadcast.dashboard import dashboard_context
from broadcast.models import Broadcast, HubProcess
from broadcast.protocol import (
    BroadcastError,
    InvalidPayload,
    InvalidTopic,
    InvalidType,
    PayloadTooLarge,
    prepare,
)
from broadcast.publishing.api import resend

PAYLOAD_PREVIEW_CHARS = 80


class PayloadField(forms.JSONField):
    """A JSON field whose empty state is an empty box, not the text ``null``."""

    def prepare_value(self, value: Any) -> Any:
        # A new broadcast's payload is None, which forms.JSONField renders as "null":
        # someone who types a payload into that box gets "null{...}", invalid JSON.
        if value is None:
            return ""
        return super().prepare_value(value)


class BroadcastForm(forms.ModelForm):  # type: ignore[type-arg]  # Django's forms are not generic at run time
    payload = PayloadField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
        help_text='Any JSON value, for example {"text": "Deploy at 18:00"}. Empty means null.',
    )

    class Meta:
        model = Broadcast
        fields = ["type", "topic", "payload"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "type" in cleaned and "payload" in cleaned and "topic" in cleaned:
            try:
                prepare(cleaned["type"], cleaned["payload"], topic=cleaned["topic"] or None)
            except InvalidType as exc:
                self.add_error("type", str(exc))
            except InvalidTopic as exc:
                self.add_error("topic", str(exc))
            except (InvalidPayload, PayloadTooLarge) as exc:
                self.add_error("payload", str(exc))
        return cleaned


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # Django's admin classes are not generic at run time
    form = BroadcastForm
    list_display = [
        "seq", "type", "topic", "short_payload", "created_by", "created_at", "status", "pk",
    ]  # fmt: skip
    list_display_links = ["seq", "type"]
    list_filter = ["status", "type"]
    search_fields = ["type", "topic"]
    readonly_fields = ["seq", "status", "error", "created_by", "created_at", "sent_at"]
    actions = ["resend_selected"]

    @admin.display(description="payload")
    def short_payload(self, obj: Broadcast) -> str:
        text = repr(obj.payload) if not isinstance(obj.payload, str) else obj.payload
        if len(text) > PAYLOAD_PREVIEW_CHARS:
            return text[: PAYLOAD_PREVIEW_CHARS - 1] + "…"
        return text

    def get_readonly_fields(self, request: HttpRequest, obj: Broadcast | None = None) -> list[str]:
        # Once saved, a broadcast is history: it can be resent, never edited.
        if obj is not None:
            return ["type", "topic", "payload", *self.readonly_fields]
        return self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Broadcast | None = None) -> bool:
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Broadcast, form: Any, change: bool) -> None:
        if not change and request.user.is_authenticated:  # the admin's users always are
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: Broadcast, post_url_continue: str | None = None
    ) -> HttpResponse:
        self.message_user(
            request,
            "It is sent to every connected client as soon as it is saved; its status "
            "column says whether it went out.",
            messages.INFO,
        )
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Resend the selected broadcasts", permissions=["add"])
    def resend_selected(self, request: HttpRequest, queryset: Any) -> None:
        sent = 0
        for row in queryset.order_by("pk"):
            try:
                resend(row, created_by=request.user)
            except BroadcastError as exc:
                self.message_user(request, f"{row}: {exc}", messages.ERROR)
            else:
                sent += 1
        if sent:
            self.message_user(request, f"Resent {sent} broadcast(s).", messages.SUCCESS)


@admin.register(HubProcess)
class HubProcessAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # Django's admin classes are not generic at run time
    list_display = [
        "host", "pid", "state", "current", "peak", "total_accepted", "started_at",
        "last_heartbeat", "stopped_at",
    ]  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The process list doubles as the hub's dashboard (live total, charts, recent
        # broadcasts): it is where an operator already looks for the processes.
        extra_context = {
            **(extra_context or {}),
            "title": "Broadcast hub",
            "dashboard": dashboard_context(
                show_broadcasts=request.user.has_perm("broadcast.view_broadcast")
            ),
        }
        return super().changelist_view(request, extra_context)
