"""Reports and tables: the versioned JSON schemas, merge of per-environment reports, since-when, diff, and the
Markdown / HTML rendering (templates and assets in assets/). Imports nothing that needs torch."""
