"""
The hub's HTTP endpoints (metrics, health, the publish API); include them with
``path("", include("broadcast.urls"))``.
"""

from django.urls import path

from broadcast import views
from broadcast.publishing import http

urlpatterns = [
    path("broadcast/publish", http.publish_view, name="broadcast-publish"),
    path("metrics", views.metrics_view, name="broadcast-metrics"),
    path("healthz", views.healthz, name="broadcast-healthz"),
]
