"""Models: registry, shared ranking wrapper, per-model dense archs."""
