"""``ENGINE = "pgsupervisor.contrib.django.backend.postgis"``: GeoDjango's
PostGIS backend on the supervised snapshot pool."""

from __future__ import annotations

from typing import Any

from django.contrib.gis.db.backends.postgis.base import (
    DatabaseWrapper as PostGISWrapper,
)
from django.db.backends.base.base import NO_DB_ALIAS

from ..wrapper import SupervisedWrapper

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(SupervisedWrapper, PostGISWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        if self.alias != NO_DB_ALIAS:
            # PostGISWrapper.get_new_connection() registers these for the
            # direct connection only; a borrowed one gets them per lease.
            self.register_geometry_adapters(connection)
        return connection
