from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("live-total/", views.live_total, name="live-total"),
    path("", include("broadcast.urls")),
    path("admin/", admin.site.urls),
]
