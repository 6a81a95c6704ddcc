# The case runner is a pytest plugin inside the harness package; this file only switches it on for this
# checkout. Another project can use it with `pytest -p harness.plugin --cases DIR`.
pytest_plugins = ("harness.plugin",)
