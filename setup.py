"""Metadata is in setup.cfg; this only declares the optional C extension."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pgsupervisor._speedups",
            ["pgsupervisor/_speedups.c"],
            optional=True,  # no compiler: the pure-Python paths are used
        )
    ]
)
