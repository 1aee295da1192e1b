"""Flask integration.

.. code-block:: python

    from flask import Flask
    from pgsupervisor.contrib.flask import PgSupervisor

    app = Flask(__name__)
    app.config["PGSUPERVISOR_DSN"] = "postgresql://app:secret@db/app"
    pgs = PgSupervisor(app)            # or PgSupervisor() + pgs.init_app(app)

    @app.get("/orders")
    def orders():
        with pgs.manager.snapshot_pool.connection() as conn:
            return {"count": conn.execute("select count(*) from orders").fetchone()[0]}

Configuration (``app.config``): ``PGSUPERVISOR_DSN`` (required),
``PGSUPERVISOR_STACK_ID`` (default: the app's name), ``PGSUPERVISOR_REPLICATION``,
``PGSUPERVISOR_POOL``, ``PGSUPERVISOR_BACKOFF``, ``PGSUPERVISOR_TIMELINE`` (the
Manager's options), ``PGSUPERVISOR_SHAPES`` (``{name: {"table": ..., "where":
..., "params": [...], "columns": [...]}}``, created with the Manager; read
them with ``pgs.shape(name)``), ``PGSUPERVISOR_HEALTH_PREFIX`` (default
``/healthz``; None
for no endpoints). The extension is ``app.extensions["pgsupervisor"]``; its
``manager`` is this process's Manager, started on first use (the first
request), stopped at exit, and replaced in a forked worker.

Health (see `pgsupervisor.contrib.process.health`): ``GET /healthz/live`` is
200 while the supervisor runs; ``GET /healthz/ready`` 200 while the pools
serve (ACTIVE, or WAITING for the slot lock); ``GET /healthz/stream`` 200 only
in the worker that streams. Otherwise 503. The body is JSON with the status,
its reason and the worker's pid.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..manager import Manager
from ..shapes.declare import declare, named
from ..shapes.shape import Shape
from .process import ProcessManager, health

__all__ = ["PgSupervisor"]

_OPTIONS = ("REPLICATION", "POOL", "BACKOFF", "TIMELINE")


class PgSupervisor:
    """The Flask extension: one Manager per process, health endpoints."""

    def __init__(self, app: Flask | None = None, **manager_options: Any):
        self.manager_options = manager_options
        self._holders: dict[int, ProcessManager] = {}
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        config = app.config
        dsn = config.get("PGSUPERVISOR_DSN")
        if not dsn:
            raise RuntimeError("PgSupervisor: set app.config['PGSUPERVISOR_DSN']")
        options: dict[str, Any] = {
            "stack_id": config.get("PGSUPERVISOR_STACK_ID", app.name)
        }
        for name in _OPTIONS:
            if config.get(f"PGSUPERVISOR_{name}") is not None:
                options[name.lower()] = config[f"PGSUPERVISOR_{name}"]
        options.update(self.manager_options)
        Manager(dsn, **options)  # validate the configuration now, not at a request
        shapes = config.get("PGSUPERVISOR_SHAPES")

        def make() -> Manager:
            manager = Manager(dsn, **options)
            if shapes:
                declare(manager, shapes)
            return manager

        holder = ProcessManager(make)
        self._holders[id(app)] = holder
        self._app = app
        app.extensions["pgsupervisor"] = self

        def start_manager() -> None:
            holder.get()

        app.before_request(start_manager)
        prefix = config.get("PGSUPERVISOR_HEALTH_PREFIX", "/healthz")
        if prefix:
            app.register_blueprint(_health_blueprint(holder), url_prefix=prefix)

    def _holder(self) -> ProcessManager:
        app = current_app._get_current_object() if current_app else self._app  # type: ignore[attr-defined]
        return self._holders[id(app)]

    @property
    def manager(self) -> Manager:
        """This process's Manager, started on first use."""
        return self._holder().get()

    def shape(self, name: str) -> Shape:
        """The shape declared as *name* in ``PGSUPERVISOR_SHAPES``."""
        return named(self.manager, name)


def _health_blueprint(holder: ProcessManager) -> Blueprint:
    bp = Blueprint("pgsupervisor_health", __name__)

    def answer(ok: bool, payload: dict[str, Any]) -> tuple[Response, int]:
        return jsonify(payload), 200 if ok else 503

    @bp.get("/live")
    def live() -> tuple[Response, int]:
        state = health(holder.get())
        return answer(state.live, state.payload)

    @bp.get("/ready")
    def ready() -> tuple[Response, int]:
        state = health(holder.get())
        return answer(state.ready, state.payload)

    @bp.get("/stream")
    def stream() -> tuple[Response, int]:
        state = health(holder.get())
        return answer(state.streaming, state.payload)

    return bp
