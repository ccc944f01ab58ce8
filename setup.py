"""What pyproject.toml can't say: the top-level migrations/ folder ships inside the package,
as `ticketing/alembic_scripts`, so that `ticketing migrate` works from an installed wheel
(pyproject's package discovery can't be combined with mapping one package elsewhere)."""

from setuptools import find_packages, setup

SCRIPTS = "ticketing.alembic_scripts"

setup(
    packages=[*find_packages(include=["ticketing", "ticketing.*"]), SCRIPTS, f"{SCRIPTS}.versions"],
    package_dir={SCRIPTS: "migrations", f"{SCRIPTS}.versions": "migrations/versions"},
    package_data={SCRIPTS: ["script.py.mako"]},
)
