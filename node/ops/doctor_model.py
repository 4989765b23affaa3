"""`thinkmesh node doctor`'s model checks: the base model directory loads, and a round fits the device.

Both read the base model's `config.json` and tokenizer only, never its weights, so they take seconds
for a 0.5B model and work before the weights are even downloaded completely. The fit is the rough
estimate of `memory_fit.estimate_fit` (the node's out-of-memory guard is what makes a round safe):
weights in the configured dtype, float32 gradient buffers, a KL reference copy when the strategy
has one, and one sequence's KV cache or activations at the strategy's `max_new_tokens`, against
the device's free memory now. The node does not know before its first announcement whether rounds
train the whole model or an adapter, so both are estimated; the check fails only when neither fits.
"""

from __future__ import annotations

from pathlib import Path

from thinkmesh.node.ops.doctor import GiB, Check, failed, passed, skipped

PROMPT_TOKENS = 64  # a task prompt under the R1 templates, with room to spare (the tiny tasks use ~40)
ADAPTER_RANK = 8  # the coordinator's `[adapter] rank` default: the adapter-round estimate assumes it
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_base_model(base_model: Path) -> tuple[Check, object | None]:
    """The directory exists and its config and tokenizer load; returns the transformers config."""
    fix = ("point base_model at a Hugging Face causal-LM directory (config.json, tokenizer, *.safetensors): "
           "`thinkmesh model init DIR`, or a downloaded checkpoint (README, adapter rounds)")
    name = "base model"
    if not base_model.is_dir():
        return failed(name, f"{base_model} does not exist or is not a directory", fix), None
    if not (base_model / "config.json").is_file():
        return failed(name, f"{base_model} has no config.json", fix), None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(base_model))
    except Exception as exc:  # transformers raises many types for a bad config
        return failed(name, f"{base_model}/config.json does not load: {type(exc).__name__}: {exc}", fix), None
    try:
        from thinkmesh.protocol.rules.scoring import load_tokenizer

        tokenizer = load_tokenizer(base_model)
    except Exception as exc:  # noqa: BLE001 - any failure to load is this check's finding
        return failed(name, f"{base_model}: the tokenizer does not load: {type(exc).__name__}: {exc}", fix), config
    weights = sorted(base_model.glob("*.safetensors"))
    if not weights:
        return failed(name, f"{base_model} has a config and tokenizer but no *.safetensors weights", fix), config
    kind = getattr(config, "model_type", "?")
    return passed(name, f"{base_model}: {kind}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                        f"vocabulary {len(tokenizer)}, {len(weights)} weight file(s)"), config


def device_free_bytes(device: str, cpu_cap_bytes: int = 0) -> int | None:
    """Free memory on `device` now, or None when the device cannot be read (no CUDA, bad index)."""
    try:
        import torch

        from thinkmesh.node.model.memory_fit import free_memory_bytes

        if device.startswith("cuda") and (not torch.cuda.is_available()
                                          or (torch.device(device).index or 0) >= torch.cuda.device_count()):
            return None
        return free_memory_bytes(device, cpu_cap_bytes)
    except Exception:  # noqa: BLE001 - the device check reports why; this one is skipped
        return None


def check_fit(model_config, dtype: str, device: str, group_size: int, max_new_tokens: int, kl_reference: bool,
              free_bytes: int | None, fraction: float = 0.8) -> Check:
    """Full-model and adapter rounds' least memory (see the module docstring) against `free_bytes`."""
    from thinkmesh.node.model.memory_fit import estimate_fit, parameter_count
    from thinkmesh.protocol.rules.adapters import lora_parameter_count

    name = "memory fit"
    if model_config is None:
        return skipped(name, "the base model did not load")
    if free_bytes is None:
        return skipped(name, f"cannot read {device}'s free memory (see the device check)")
    parameters = parameter_count(model_config)
    try:
        lora = lora_parameter_count(model_config.to_dict(), ADAPTER_RANK)
    except KeyError:  # not a Llama/Qwen2-shaped config: no adapter estimate
        lora = parameters
    extra = int(kl_reference)
    args = (model_config, parameters, DTYPE_BYTES[dtype])
    full = estimate_fit(*args, parameters, PROMPT_TOKENS, max_new_tokens, free_bytes, fraction, extra)
    adapter = estimate_fit(*args, lora, PROMPT_TOKENS, max_new_tokens, free_bytes, fraction, extra)
    group = max(group_size, 1)
    detail = (f"{parameters / 1e6:.0f}M parameters in {dtype} on {device}, {free_bytes / GiB:.1f} GiB free; "
              f"full-model rounds need {full.need_bytes / GiB:.2f} GiB (micro-batch {full.plan.micro_batch}), "
              f"adapter rounds (LoRA rank {ADAPTER_RANK}) {adapter.need_bytes / GiB:.2f} GiB "
              f"(micro-batch {adapter.plan.micro_batch}, rollout batch {adapter.plan.rollout_batch}; "
              f"a group is {group} sequences of up to {PROMPT_TOKENS}+{max_new_tokens} tokens)")
    if not adapter.fits:
        return failed(name, detail, f"free memory on {device} (other processes), or use a larger device or a smaller base model")
    if not full.fits:
        return passed(name, detail + "; adapter rounds only")
    return passed(name, detail)
