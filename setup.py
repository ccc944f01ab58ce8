"""What pyproject.toml can't say: the top-level migrations/ folder ships inside the package,
as `ticketing/alembic_scripts`, so that `ticketing migrate` works from an installed wheel
(pyproject's package discovery can't be combined with mapping one package elsewhere)."""

from setuptools import find_packages, setup

SCRIPTS = "ticketing.alembic_scripts"

# GraphiQL's page, scripts and styles (ticketing/static/graphiql/README.md): a folder of data
# that setuptools would otherwise warn about at every install, as a package it wasn't told of.
ASSETS = "ticketing.static.graphiql"

setup(
    packages=[
        *find_packages(include=["ticketing", "ticketing.*"]),
        ASSETS,
        SCRIPTS,
        f"{SCRIPTS}.versions",
    ],
    package_dir={SCRIPTS: "migrations", f"{SCRIPTS}.versions": "migrations/versions"},
    package_data={SCRIPTS: ["script.py.mako"], ASSETS: ["*"]},
)
