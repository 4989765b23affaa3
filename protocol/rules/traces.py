"""Reasoning traces with provenance: the leaf that names one accepted sample, and a round's tree.

Every sample the coordinator accepted in a round becomes one leaf of that round's traces tree,
whose root goes on chain in the settle transaction (`RoundBook.verifyTrace` checks proofs
against it). A leaf's item is the trace hash

    trace_hash = keccak256(TRACE_DOMAIN ++ canonical encoding of TraceLeaf(run, round, node key,
                                                                           sample index, sample hash))

so a trace proves which run, round and node produced it, and `sample_hash` (protocol/rules/messages.py)
commits to the completion tokens, their logprobs and the claimed (verified) rewards. Leaves are
ordered by (node key, sample index): the same accepted set always gives the same root. A round
with no accepted sample has the root `EMPTY_TRACES_ROOT` (32 zero bytes). In a generation round only
the traces that pass the acceptance rule (`protocol/rules/generation.py`: accuracy 1 and format 1) are
leaves; their sample indices are the contribution's own, so a leaf still names one exact sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thinkmesh.protocol.rules.encoding import Hash32, PublicKey32, encode_record
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.rules.generation import accepted_trace_indices
from thinkmesh.protocol.rules.merkle import MerkleTree, verify_proof
from thinkmesh.protocol.rules.messages import Contribution, sample_hash

TRACE_DOMAIN = b"thinkmesh/trace/v1"
EMPTY_TRACES_ROOT = b"\x00" * 32


@dataclass(frozen=True)
class TraceLeaf:
    """What a trace hash binds: the run, the round, the node and one of its samples."""

    run_id: str
    round_id: int
    node_key: PublicKey32
    sample_index: int
    sample_hash: Hash32


def contribution_traces(contribution: Contribution, generation: bool = False) -> list[TraceLeaf]:
    """One leaf per sample of an accepted contribution, in sample order; in a generation round
    (`generation`), one per accepted trace only."""
    indices = accepted_trace_indices(contribution) if generation else range(len(contribution.samples))
    return [
        TraceLeaf(contribution.run_id, contribution.round_id, contribution.node_key, index,
                  sample_hash(contribution.samples[index]))
        for index in indices
    ]


def leaf_trace_hash(leaf: TraceLeaf) -> bytes:
    """The traces-tree item of one accepted sample (see the module docstring)."""
    return keccak256(TRACE_DOMAIN + encode_record(leaf))


@dataclass(frozen=True)
class TracesTree:
    """A round's traces tree: leaves in canonical order, their hashes, and the Merkle tree."""

    leaves: tuple[TraceLeaf, ...]
    hashes: tuple[bytes, ...]
    tree: MerkleTree | None

    @property
    def root(self) -> bytes:
        return self.tree.root if self.tree is not None else EMPTY_TRACES_ROOT

    def proof(self, position: int) -> list[bytes]:
        return self.tree.proof(position) if self.tree is not None else []


def traces_tree(leaves: Iterable[TraceLeaf]) -> TracesTree:
    """The tree over `leaves`, sorted by (node key, sample index)."""
    ordered = tuple(sorted(leaves, key=lambda leaf: (leaf.node_key, leaf.sample_index)))
    hashes = tuple(leaf_trace_hash(leaf) for leaf in ordered)
    return TracesTree(ordered, hashes, MerkleTree.from_items(hashes) if hashes else None)


def verify_trace_proof(root: bytes, leaf: TraceLeaf, proof: Sequence[bytes]) -> bool:
    """The local form of the contract's `verifyTrace`: is `leaf` under `root`? (`traces verify` and
    `thinkmesh distill --rpc` ask both, against the round's settled root.)"""
    return verify_proof(root, leaf_trace_hash(leaf), proof)
