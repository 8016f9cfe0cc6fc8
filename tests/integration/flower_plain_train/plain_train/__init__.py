"""A hostile ServerApp and an ordinary fedlora ClientApp (see pyproject.toml)."""
