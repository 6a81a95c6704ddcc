"""Tiny random-init model families: a registry of configs, inputs and how to make a local base checkpoint.

Nothing is downloaded: every base is built from a config with a fixed seed, saved with save_pretrained into
a directory and loaded back with from_pretrained(dir) on both sides of the round trip, as users do.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

BASE_SEED = 1234  # seeds the base model build and every from_pretrained of the base (new heads, resizes)


@dataclass(frozen=True)
class Inputs:
    """How a family's inputs are made: the function the harness calls, and its repro snippet -- the same code
    with torch only, the body of ``def family_inputs(config, gen)`` in the standalone repro.py of --keep-failed
    (harness/running/repro.py), indented as you like."""
    make: Callable  # (config, torch.Generator) -> dict of CPU tensors
    repro: str

    def __call__(self, config, gen) -> dict:
        return self.make(config, gen)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    model_class: str
    tiny_config: dict
    make_inputs: Inputs  # (config, torch.Generator) -> dict of CPU tensors, with its repro snippet
    description: str = ""
    groups: dict = field(default_factory=dict)  # symbolic module groups for cases: "@attention" -> names
    layers_pattern: str | None = None  # the ModuleList name that layers_to_transform counts in

    def classes(self):
        import transformers

        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


def _token_inputs(config, gen):
    import torch

    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    ids[:, -1] = config.vocab_size - 1  # always touch the last row (a resized vocabulary's new tokens)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


TOKEN_INPUTS = Inputs(_token_inputs, """
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=gen)
    ids[:, -1] = config.vocab_size - 1  # always touch the last row (a resized vocabulary's new tokens)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
""")


def _pixel_inputs(config, gen):
    import torch

    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=gen)}


PIXEL_INPUTS = Inputs(_pixel_inputs, """
    return {"pixel_values": torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=gen)}
""")


def _small_image_inputs(config, gen):
    import torch

    return {"pixel_values": torch.randn(2, config.num_channels, 32, 32, generator=gen)}


SMALL_IMAGE_INPUTS = Inputs(_small_image_inputs, """
    return {"pixel_values": torch.randn(2, config.num_channels, 32, 32, generator=gen)}
""")


def _audio_inputs(config, gen):
    import torch

    return {"input_values": torch.randn(2, 1600, generator=gen)}


AUDIO_INPUTS = Inputs(_audio_inputs, """
    return {"input_values": torch.randn(2, 1600, generator=gen)}
""")


# initializer_range: the transformers default (0.02) leaves tiny models with logits near 1e-2, where LoRA on the
# attention moves a BERT classifier's logits by only ~6e-4 -- below what bf16 can resolve and barely above the
# fp32 tolerance, so a lost tensor could hide. At 0.2 (0.1 for Llama) logits are O(1) and the adapter's effect
# is 0.4 to 4, far above every tolerance (measured: bert 0.38, vit 1.4, wav2vec2 2.6, llama 2.7).
INIT = dict(initializer_range=0.2)

_VIT_GROUPS = {"targets": ["q_proj", "v_proj"], "mlp": ["fc1"], "head": ["classifier"], "norm": ["layernorm"]}
_VIT = dict(patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **INIT)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("wav2vec2_ctc", "Wav2Vec2Config", "Wav2Vec2ForCTC",
           dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, hidden_dropout=0.1, attention_dropout=0.1, **INIT),
           AUDIO_INPUTS, "speech encoder with a CTC head (no input embeddings: get_input_embeddings raises)",
           groups={"targets": ["q_proj", "v_proj"], "mlp": ["intermediate_dense"], "head": ["lm_head"],
                   "norm": ["final_layer_norm"]}, layers_pattern="layers"),
    Family("vit_224", "ViTConfig", "ViTForImageClassification", dict(image_size=224, **_VIT), PIXEL_INPUTS,
           "ViT image classifier at 224 px (197 position embeddings)", groups=_VIT_GROUPS),
    Family("vit_512", "ViTConfig", "ViTForImageClassification", dict(image_size=512, **_VIT), PIXEL_INPUTS,
           "ViT image classifier at 512 px (1025 position embeddings)", groups=_VIT_GROUPS),
    Family("bert_classifier", "BertConfig", "BertForSequenceClassification",
           dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, num_labels=3, **INIT), TOKEN_INPUTS, "BERT sequence classifier",
           groups={"targets": ["query", "value"], "mlp": ["intermediate.dense"], "head": ["classifier"],
                   "norm": ["LayerNorm"], "embedding": ["word_embeddings"]}, layers_pattern="layer"),
    Family("llama_causal", "LlamaConfig", "LlamaForCausalLM",
           dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, max_position_embeddings=64, tie_word_embeddings=False,
                initializer_range=0.1), TOKEN_INPUTS,
           "Llama-style causal LM",
           groups={"targets": ["q_proj", "v_proj"], "mlp": ["gate_proj", "up_proj"], "head": ["lm_head"],
                   "norm": ["norm"], "embedding": ["embed_tokens"]}, layers_pattern="layers"),
    Family("resnet_classifier", "ResNetConfig", "ResNetForImageClassification",
           dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                num_labels=3), SMALL_IMAGE_INPUTS,
           "ResNet image classifier at 32 px: convolutions and BatchNorm with running statistics (buffers)",
           groups={"targets": ["convolution"], "head": ["classifier.1"], "norm": ["normalization"]}),
]}


def family_for_config(config) -> Family:
    """The first family built from this config class (inputs depend only on the config)."""
    for family in FAMILIES.values():
        if family.config_class == type(config).__name__:
            return family
    raise LookupError(f"no family uses {type(config).__name__}")


def make_inputs(family: Family, config, seed: int = 4321) -> dict:
    import torch

    return family.make_inputs(config, torch.Generator().manual_seed(seed))


class BaseCheckpoints:
    """Per-process cache of saved random-init base checkpoints, keyed by family and config overrides."""

    def __init__(self, root: str | None = None):
        self._root = root
        self._dirs: dict[str, str] = {}

    @property
    def root(self) -> str:
        if self._root is None:
            self._root = tempfile.mkdtemp(prefix="peft-compat-bases-")
        return self._root

    def known(self) -> dict[str, str]:
        """A snapshot of the checkpoints built so far: key -> folder (see adopt)."""
        return dict(self._dirs)

    def adopt(self, built: dict[str, str]) -> None:
        """Take over checkpoints that another process built into this cache's folder (a forked worker)."""
        self._dirs.update(built)

    def built_since(self, snapshot: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in self._dirs.items() if snapshot.get(k) != v}

    def remove(self) -> None:
        """Delete every checkpoint and the cache's folder (if this cache made it or was given it)."""
        import shutil

        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None
        self._dirs.clear()

    def get(self, family: Family, overrides: dict | None = None) -> str:
        overrides = overrides or {}
        key = family.name + "-" + hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
        path = self._dirs.get(key)
        if path is None or not os.path.exists(os.path.join(path, "config.json")):
            path = os.path.join(self.root, key)
            self._build(family, overrides, path)
            self._dirs[key] = path
        return path

    @staticmethod
    def _build(family: Family, overrides: dict, path: str) -> None:
        import torch

        config_cls, model_cls = family.classes()
        config = config_cls(**{**family.tiny_config, **overrides})
        torch.manual_seed(BASE_SEED)
        model = model_cls(config)
        tmp = path + ".partial"
        model.save_pretrained(tmp)
        os.replace(tmp, path)
