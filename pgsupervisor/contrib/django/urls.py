from django.urls import path

from . import views

urlpatterns = [
    path("healthz/live", views.live, name="pgsupervisor-live"),
    path("healthz/ready", views.ready, name="pgsupervisor-ready"),
    path("healthz/stream", views.stream, name="pgsupervisor-stream"),
]
