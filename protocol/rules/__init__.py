"""The round protocol: everything a node and the coordinator compute identically, in round order.

Read it like a specification. Nothing here touches the chain, keys, the network or the disk's
configuration (`tests/test_layering.py` keeps it so): it is pure rules over bytes and tensors.

1. Names and bytes: `hashing`, `encoding` (canonical msgpack), `identity` (Ed25519 keys and
   domain-separated signatures), `errors`.
2. The announcement: `messages` (every wire message), `seeds` (the round seed and the audit
   beacon), `terms` (what must be sampled under), `model_manifest` (a version as bytes),
   `adapters` (base + LoRA versions), `wire_budget` (will the contribution fit the wire?).
3. The work: `tasks` (prompts and the held-out partition), `sampling` (per-row streams and the
   draw rule), `rollout` (the engine), `rewards`, `strategies` and `grpo` (the objectives).
4. The contribution: `gradient_quantization` and `gradient_codec` (the gradient on the wire),
   `merkle` (the samples root).
5. The verdict: `audit` (which samples and tensors are checked), `scoring` and `prefix_scoring`
   (logprobs re-computed), `verification` (the checks, in order), `slashing` (which failures
   cost stake), `evidence` (a verdict anyone can re-run), `audit_economics` (rates that make
   cheating lose money).
6. The payout: `payout` (per verified prompt or trace), `traces` (the accepted samples' tree).
7. Beyond a training round: `evaluation` (the one held-out rule), `contribution_value`
   (what one update does alone), `generation` (paid rejection sampling), `receipts` (answers
   anyone can re-check).
"""
