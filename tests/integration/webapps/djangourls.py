import os

from django.http import JsonResponse
from django.urls import include, path

from pgsupervisor.contrib.django import get_manager


def pid(request):
    with get_manager().snapshot_pool.connection() as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
    return JsonResponse({"worker": os.getpid(), "backend": row[0] if row else None})


urlpatterns = [path("", include("pgsupervisor.contrib.django.urls")), path("pid", pid)]
