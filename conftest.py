# The case runner is a pytest plugin inside the harness package; this file only switches it on for this
# checkout. Another project can use it with `pytest -p harness.running.plugin --cases DIR`.
pytest_plugins = ("harness.running.plugin",)

# Hypothesis profiles for the generated-config tests: "ci" (default; small, derandomized, so every CI run draws
# the same examples) and "nightly" (large). Select with `pytest --hypothesis-profile=nightly`.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the case runner works without hypothesis
    pass
else:
    _quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None, suppress_health_check=_quiet,
                              print_blob=True)
    settings.register_profile("nightly", max_examples=300, deadline=None, suppress_health_check=_quiet,
                              print_blob=True)
    settings.load_profile("ci")
