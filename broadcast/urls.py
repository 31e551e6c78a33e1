"""Operational endpoints; include them with ``path("", include("broadcast.urls"))``."""

from django.urls import path

from . import views

urlpatterns = [
    path("metrics", views.metrics_view, name="broadcast-metrics"),
    path("healthz", views.healthz, name="broadcast-healthz"),
]
