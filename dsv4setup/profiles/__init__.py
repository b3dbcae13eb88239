"""Profiles: one YAML per hardware class (data in the top-level `profiles/`)."""
