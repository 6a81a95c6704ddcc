"""The round trip of one cell: tiny model families, adapters, user steps, save and load modes, version shims and
run_roundtrip (build -> adapt -> save -> load -> forward -> compare). No policy: the known-issues table is
applied by harness.running."""
