"""Adapter rounds: a frozen base pinned by its hash, and a LoRA adapter that rounds train and sync.

A model version in an adapter round is the pair (base hash, adapter hash). The base is any causal
LM whose parameters hash (`model_manifest.parameters_hash` of all its parameters under its
canonical architecture) to `AdapterSpec.base_hash`; a node fetches it once, or finds it locally
by that hash. The adapter is a `peft` LoRA over the named linear modules (by default every linear
layer of the transformer, attention and MLP; never the output head, which is tied to the
embedding in the models we run): its tensors, and nothing else, are what a round's gradients,
optimizer steps and syncs cover. The adapter's manifest carries `adapter_architecture(spec)` as its
architecture, so its model hash commits to the base hash and the adapter's shape as well as to
its weights: the announcement's `model_hash` names the whole version.

"Trainable parameters" are the parameters that require grad: the adapter's under peft, every
parameter of a plain model. Verification, aggregation and manifests use `trainable_parameters`,
so a full-model round is the special case where everything is trainable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from thinkmesh.protocol.rules.encoding import Hash32
from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError

ADAPTER_KIND = "lora"
MAX_RANK = 1024
MAX_TARGETS = 32
# The linear layers of a Llama/Qwen2-style block: attention (q, k, v, o) and MLP (gate, up, down).
QWEN2_LINEAR = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")


class AdapterError(ProtocolError):
    """An adapter that does not fit its base, or a base whose hash is not the one announced."""


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter half of a round's model: which base, and the LoRA's shape (peft's LoraConfig)."""

    base_hash: Hash32  # parameters_hash of the frozen base (all its parameters)
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = QWEN2_LINEAR  # module names (peft's suffix match), sorted

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not 1 <= self.rank <= MAX_RANK:
            raise EncodingError(f"adapter rank: expected 1..{MAX_RANK}, got {self.rank!r}")
        if not 0 < self.alpha <= 1e6:
            raise EncodingError(f"adapter alpha: expected a number in (0, 1e6], got {self.alpha!r}")
        targets = self.target_modules
        if not 1 <= len(targets) <= MAX_TARGETS or list(targets) != sorted(set(targets)):
            raise EncodingError(f"adapter target_modules: expected 1..{MAX_TARGETS} sorted distinct names, got {targets!r}")
        if any(not t or not t.replace("_", "").isalnum() for t in targets):
            raise EncodingError(f"adapter target_modules: expected module names like 'q_proj', got {targets!r}")


def adapter_architecture(spec: AdapterSpec) -> str:
    """The adapter manifest's `architecture`: canonical JSON of the base hash and the LoRA shape."""
    doc = {"adapter": ADAPTER_KIND, "alpha": float(spec.alpha), "base_hash": spec.base_hash.hex(),
           "rank": spec.rank, "target_modules": list(spec.target_modules)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def adapter_from_architecture(architecture: str) -> AdapterSpec | None:
    """The spec an adapter manifest's architecture names; None for a full model's config."""
    try:
        doc = json.loads(architecture)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("adapter") != ADAPTER_KIND:
        return None
    try:
        spec = AdapterSpec(base_hash=bytes.fromhex(doc["base_hash"]), rank=doc["rank"], alpha=float(doc["alpha"]),
                           target_modules=tuple(doc["target_modules"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"an adapter architecture that names no valid adapter: {exc}") from exc
    if len(spec.base_hash) != 32 or adapter_architecture(spec) != architecture:
        raise AdapterError("an adapter architecture that is not canonical")
    return spec


def linear_module_names(model) -> tuple[str, ...]:
    """The distinct names of the model's linear layers, the output head excepted: "all linear
    layers" spelled out, so the announcement says exactly which modules carry the adapter."""
    import torch

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    return tuple(sorted(names))


def lora_config(spec: AdapterSpec):
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules),
                      lora_dropout=0.0, bias="none", init_lora_weights=True)


def attach_adapter(base_model, spec: AdapterSpec, seed: int = 0):
    """`base_model` (modified in place: its linear layers gain LoRA branches) as a peft model in
    eval mode whose trainable parameters are the adapter's. The LoRA A matrices are initialised
    from `seed` (B starts at zero, so the version-0 adapter changes nothing); a node overwrites
    them with the announced adapter anyway."""
    import torch
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base_model, lora_config(spec))
    if not trainable_parameters(model):
        raise AdapterError(f"adapter targets {list(spec.target_modules)} match no module of the base model")
    return model.eval()


def detach_adapter(model):
    """The plain base model of a peft model (its LoRA branches removed, weights untouched)."""
    return model.unload() if hasattr(model, "unload") else model


def trainable_named_parameters(model) -> list[tuple[str, object]]:
    """(name, parameter) of every parameter that requires grad, in model order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model) -> dict:
    """The tensors an adapter manifest carries and gradients cover: trainable ones, detached, on CPU."""
    return {name: p.detach().to("cpu") for name, p in trainable_named_parameters(model)}


def trainable_shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in trainable_named_parameters(model)}


def trainable_count(model) -> int:
    return sum(p.numel() for _, p in trainable_named_parameters(model))


def lora_parameter_count(config: dict, spec_rank: int, targets: tuple[str, ...] = QWEN2_LINEAR) -> int:
    """LoRA parameters of a Qwen2/Llama-shaped config (a transformers config dict) at rank
    `spec_rank` over `targets`, without building the model: per target r * (in + out)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
              "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    per_layer = sum(spec_rank * sum(shapes[t]) for t in targets if t in shapes)
    return per_layer * config["num_hidden_layers"]


# --- an adapter version on disk: what a verdict's re-run needs beside the public base ----------
ADAPTER_FILE_SUFFIX = ".adapter.safetensors"


def adapter_file_name(model_hash: bytes) -> str:
    """`<adapter version hash hex>.adapter.safetensors`: the coordinator writes one beside each
    adapter round's evidence, and `verify-evidence` finds it there by the announcement's model_hash."""
    return f"{model_hash.hex()}{ADAPTER_FILE_SUFFIX}"


def adapter_file_bytes(model) -> bytes:
    """The model's trainable (adapter) tensors as safetensors bytes: the adapter file's content,
    which the caller writes (the rules do no I/O of their own)."""
    from safetensors.torch import save

    return save({n: t.contiguous() for n, t in trainable_parameters(model).items()})


def load_adapter_file(model, path) -> None:
    """Copies the adapter tensors in `path` into `model`'s trainable parameters (names and shapes
    must match: AdapterError otherwise). The caller checks the resulting version's hash."""
    from safetensors.torch import load_file

    from thinkmesh.protocol.rules.model_manifest import ManifestError, assign_parameters

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise AdapterError(f"adapter file {path}: expected safetensors, got {type(exc).__name__}: {exc}") from exc
    try:
        assign_parameters(model, tensors, trainable_only=True)
    except ManifestError as exc:
        raise AdapterError(f"adapter file {path} does not fit the announced adapter: {exc}") from exc
