"""A Flask app using the extension, served by gunicorn in the tests."""

import json
import os

from flask import Flask

from pgsupervisor.contrib.flask import PgSupervisor

app = Flask("flasktest")
app.config["PGSUPERVISOR_DSN"] = os.environ["TEST_DSN"]
app.config["PGSUPERVISOR_POOL"] = {"size": 2, "idle_interval": 0.2, "timeout": 2}
app.config["PGSUPERVISOR_BACKOFF"] = {"type": "exp", "min": 0.05, "max": 0.3}
if os.environ.get("TEST_REPLICATION"):
    app.config["PGSUPERVISOR_REPLICATION"] = json.loads(os.environ["TEST_REPLICATION"])
    app.config["PGSUPERVISOR_TIMELINE"] = {"directory": os.environ["TEST_STATE_DIR"]}
pgs = PgSupervisor(app)


@app.get("/pid")
def pid() -> dict:
    with pgs.manager.snapshot_pool.connection() as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
    return {
        "worker": os.getpid(),
        "backend": row[0] if row else None,
        "status": pgs.manager.status.value,
    }
