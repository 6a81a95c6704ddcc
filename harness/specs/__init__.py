"""Case specs: case files and their validation, the status vocabulary, the known-issues table. No torch."""
