"""Health views: liveness (the supervisor runs), readiness (the pools
serve: ACTIVE or WAITING) and streaming (this process streams the slot)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from ..process import health
from . import get_manager


def live(request: HttpRequest) -> JsonResponse:
    state = health(get_manager())
    return JsonResponse(state.payload, status=200 if state.live else 503)


def ready(request: HttpRequest) -> JsonResponse:
    state = health(get_manager())
    return JsonResponse(state.payload, status=200 if state.ready else 503)


def stream(request: HttpRequest) -> JsonResponse:
    state = health(get_manager())
    return JsonResponse(state.payload, status=200 if state.streaming else 503)
