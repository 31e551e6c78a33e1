"""A project's URLconf that leaves out ``broadcast.urls`` (no /metrics, no /healthz)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
