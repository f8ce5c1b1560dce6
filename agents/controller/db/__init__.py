"""The controller's persistence: the only package that imports SQLAlchemy and Alembic."""
