"""Artifacts for the cross-version table: what one release wrote, read by another.

store.py   write side: a finished cell's saved artifact, the base checkpoint it loaded, its inputs and logits
           (safetensors) and a manifest.json (versions, save mode, every file with its sha256, the saved
           adapter config's keys), under <root>/<writer env>/cells/<cell>/
read.py    read side: another release loads the writer's base and what was saved, with the case's load
           mode, and must reproduce the writer's logits; a base that does not load or already computes
           something else is "base-incompatible", not the adapter's fault
"""
