"""The sentence-transformers layout of an export: ``modules.json`` and the module folders.

It is the format sentence-transformers 2.x-5.x write (``sentence_transformers.models.*``
module names), which 6.x still loads (checked with 6.2.0); the transformer itself is
the transformers-format weights at the top of the folder.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from metric_sim.distances import Metric
from metric_sim.encoders.text import Encoder
from metric_sim.errors import ExportError
from metric_sim.export.source import library_versions
from metric_sim.storage import write_json_atomic

MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
ST_CONFIG_FILE = "sentence_bert_config.json"
ST_MODEL_CONFIG_FILE = "config_sentence_transformers.json"


def accepts_add_pooling_layer(encoder: Encoder) -> bool:
    """Whether the backbone class takes ``add_pooling_layer`` (BERT-like models do)."""
    return "add_pooling_layer" in inspect.signature(type(encoder.model).__init__).parameters


def projection_head(encoder: Encoder) -> nn.Linear | None:
    """The encoder's projection head (frozen-encoder training adds one), if any."""
    head = getattr(encoder, "projection", None)
    if head is not None and not isinstance(head, nn.Linear):
        raise ExportError(f"cannot export a projection head of type {type(head).__name__}; only torch.nn.Linear is supported")
    return head


def write_sentence_transformers_layout(encoder: Encoder, metric: Metric, folder: Path) -> list[str]:
    """Write modules.json and the module folders next to the transformers files; returns module paths."""
    from safetensors.torch import save_file

    hidden = int(encoder.model.config.hidden_size)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / POOLING_DIR).mkdir()
    write_json_atomic(
        folder / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": encoder.pooling == "cls",
            "pooling_mode_mean_tokens": encoder.pooling == "mean",
            "pooling_mode_max_tokens": encoder.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    head = projection_head(encoder)
    if head is not None:
        dense = f"{len(modules)}_Dense"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense, "type": "sentence_transformers.models.Dense"})
        (folder / dense).mkdir()
        write_json_atomic(
            folder / dense / "config.json",
            {
                "in_features": int(head.in_features),
                "out_features": int(head.out_features),
                "bias": head.bias is not None,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
        state = {f"linear.{k}": v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(folder / dense / "model.safetensors"), metadata={"format": "pt"})
    if encoder.normalize:
        norm = f"{len(modules)}_Normalize"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": norm, "type": "sentence_transformers.models.Normalize"})
        (folder / norm).mkdir()
        write_json_atomic(folder / norm / "config.json", {})  # a file keeps the folder through hub uploads
    write_json_atomic(folder / MODULES_FILE, modules)
    st_config: dict[str, Any] = {"max_seq_length": encoder.max_length, "do_lower_case": False}
    if accepts_add_pooling_layer(encoder):
        # The unused pooler is not exported; without this transformers reports it "newly initialized".
        st_config["model_args"] = {"add_pooling_layer": False}
    write_json_atomic(folder / ST_CONFIG_FILE, st_config)
    versions = library_versions()
    st_versions = {"transformers": versions["transformers"], "pytorch": versions["torch"]}
    write_json_atomic(
        folder / ST_MODEL_CONFIG_FILE,
        {
            "__version__": st_versions,
            "prompts": {},
            "default_prompt_name": None,
            # Raw distance is the model: sentence-transformers' similarity() returns -distance.
            "similarity_fn_name": metric.value,
        },
    )
    return [m["path"] for m in modules]
