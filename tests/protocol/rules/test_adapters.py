"""Adapter rounds at the protocol level: a peft LoRA on the tiny Qwen2, gradients of the adapter
only, verification under base + adapter, an AdamW step on the adapter alone, and the wire check
that refuses a full-model round too large to send."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from thinkmesh.coordinator.work.aggregation import apply_update
from thinkmesh.devnet.cheats import CheatInputs, apply_cheat, honest_contribution
from thinkmesh.protocol.rules.adapters import (
    QWEN2_LINEAR,
    AdapterSpec,
    adapter_architecture,
    adapter_from_architecture,
    attach_adapter,
    linear_module_names,
    lora_parameter_count,
    trainable_count,
    trainable_parameters,
    trainable_shapes,
)
from thinkmesh.protocol.rules.gradient_codec import decode_gradient
from thinkmesh.protocol.rules.messages import sign_message
from thinkmesh.protocol.rules.model_manifest import (
    assign_parameters,
    build_manifest,
    canonical_architecture,
    load_state_dict,
    model_parameters,
    parameters_hash,
)
from thinkmesh.protocol.rules.verification import VerificationContext, verify_contribution
from thinkmesh.protocol.rules.wire_budget import WireLimitError, check_fits_wire
from tests.verification_world import STRATEGY, announce, make_model, world


def _adapter_world(rank: int = 2):
    base = make_model()
    base_hash = parameters_hash(model_parameters(base), canonical_architecture(base.config.to_dict()))
    spec = AdapterSpec(base_hash=base_hash, rank=rank, alpha=4.0, target_modules=linear_module_names(base))
    model = attach_adapter(base, spec, seed=1)
    with torch.no_grad():  # a trained adapter: B != 0, so A's gradient is non-zero too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return spec, model


def test_all_linear_layers_carry_the_adapter_and_only_it_is_trainable():
    spec, model = _adapter_world()
    assert spec.target_modules == QWEN2_LINEAR  # attention and MLP, not the tied head
    names = sorted(trainable_shapes(model))
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert any("mlp.down_proj" in n for n in names) and any("self_attn.q_proj" in n for n in names)
    assert trainable_count(model) == lora_parameter_count(model.config.to_dict(), spec.rank)
    assert adapter_from_architecture(adapter_architecture(spec)) == spec
    assert adapter_from_architecture(canonical_architecture(model.config.to_dict())) is None


def test_an_adapter_manifest_round_trips_into_a_fresh_base_plus_adapter():
    spec, model = _adapter_world()
    manifest, chunks = build_manifest(trainable_parameters(model), adapter_architecture(spec), chain_id=1,
                                      run_id="r", version=1, round_id=1, parent_hash=b"\0" * 32)
    assert manifest.total_bytes == 4 * trainable_count(model)
    other = attach_adapter(make_model(), spec, seed=9)
    assign_parameters(other, load_state_dict(manifest, chunks), trainable_only=True)
    assert parameters_hash(trainable_parameters(other), adapter_architecture(spec)) == manifest.model_hash


def test_an_honest_adapter_contribution_verifies_and_steps_the_adapter_alone():
    spec, model = _adapter_world()
    w = world()
    announcement = sign_message(dataclasses.replace(
        announce(w.coordinator, make_model(), 5, b"\x55" * 32), adapter=spec), w.coordinator)
    honest = honest_contribution(model, w.tokenizer, announcement, w.nodes[0], STRATEGY, "blockwise8")
    assert [b.name for b in honest.gradient.tensors] == sorted(trainable_shapes(model))
    full_policy = dataclasses.replace(VerificationContext(None).policy, full_gradient_rate=1.0)
    context = VerificationContext(frozenset(n.public_key for n in w.nodes), policy=full_policy)
    report = verify_contribution(announcement, honest, model, w.tokenizer, context)
    assert report.accepted, report
    cheat = apply_cheat("random-gradient", CheatInputs(announcement=announcement, identity=w.nodes[0], honest=honest,
                                                       model=model, tokenizer=w.tokenizer, seed=3))
    report = verify_contribution(announcement, cheat, model, w.tokenizer, context)
    assert report.reason == "gradient-mismatch"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: t.clone() for n, t in trainable_parameters(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    apply_update(model, optimizer, decode_gradient(honest.gradient, trainable_shapes(model)))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, before[n]) for n, p in trainable_parameters(model).items())


def test_a_full_model_round_too_large_for_the_wire_is_refused_naming_adapter_rounds():
    w = world()
    qwen_05b = 494_032_768
    with pytest.raises(WireLimitError, match="use adapter rounds"):
        check_fits_wire(w.round, qwen_05b, 290, "blockwise8")
    spec = AdapterSpec(base_hash=b"\1" * 32)
    lora = lora_parameter_count({"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                                 "num_key_value_heads": 2, "num_hidden_layers": 24}, spec.rank)
    assert lora == 8 * 549_888
    adapter_round = dataclasses.replace(w.round, adapter=spec)
    assert check_fits_wire(adapter_round, lora, 24 * 7 * 2, "blockwise8").total < 0.01 * 4 * qwen_05b
