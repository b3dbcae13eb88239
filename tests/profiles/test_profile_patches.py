"""Every patch id a shipped profile lists exists in patches/index.yaml and has a variant for its vLLM."""

from __future__ import annotations

import pytest

from dsv4setup.patches.manifest import load_manifest
from dsv4setup.profiles.loader import load_all_profiles


@pytest.mark.parametrize("profile", load_all_profiles(), ids=lambda p: p.name)
def test_profile_patch_ids_exist_and_cover_its_vllm(profile) -> None:  # noqa: ANN001 - pytest param
    manifest = load_manifest()
    for patch_id in profile.patches:
        patch = manifest.get(patch_id)
        if patch.is_diff:
            assert patch.variant_for(profile.vllm.version) is not None, (profile.name, patch_id)
