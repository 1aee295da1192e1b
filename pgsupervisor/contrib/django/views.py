"""Health views: liveness (the supervisor runs) and readiness (ACTIVE)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from ..process import health
from . import get_manager


def live(request: HttpRequest) -> JsonResponse:
    ok, _, payload = health(get_manager())
    return JsonResponse(payload, status=200 if ok else 503)


def ready(request: HttpRequest) -> JsonResponse:
    _, ok, payload = health(get_manager())
    return JsonResponse(payload, status=200 if ok else 503)
