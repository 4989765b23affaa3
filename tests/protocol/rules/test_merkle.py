import json
import pathlib

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkmesh.protocol.rules.errors import MerkleError
from thinkmesh.protocol.rules.merkle import MerkleTree, hash_pair, leaf_hash, merkle_root, verify_proof

VECTORS = pathlib.Path(__file__).parents[2] / "vectors" / "merkle.json"


def items(n: int) -> list[bytes]:
    return [keccak(i.to_bytes(4, "big")) for i in range(n)]


def test_single_leaf_root_is_the_double_hashed_leaf():
    (item,) = items(1)
    assert merkle_root([item]) == keccak(keccak(item))


def test_two_leaves_hash_as_a_sorted_pair():
    a, b = items(2)
    la, lb = leaf_hash(a), leaf_hash(b)
    expected = keccak(min(la, lb) + max(la, lb))
    assert merkle_root([a, b]) == expected
    assert merkle_root([b, a]) == expected  # commutative at one level


def test_odd_layer_promotes_its_last_node():
    a, b, c = items(3)
    assert merkle_root([a, b, c]) == hash_pair(hash_pair(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_proof_verifies_and_no_other_item_does(n, data):
    leaves = items(n)
    tree = MerkleTree.from_items(leaves)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = tree.proof(i)
    assert verify_proof(tree.root, leaves[i], proof)
    assert not verify_proof(tree.root, keccak(b"not a leaf"), proof)
    if proof:
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        tampered = list(proof)
        tampered[j] = bytes(32)
        assert not verify_proof(tree.root, leaves[i], tampered)


def test_an_inner_node_cannot_pass_for_a_leaf():
    a, b, c, d = items(4)
    tree = MerkleTree.from_items([a, b, c, d])
    inner = tree.layers[1][0]
    assert not verify_proof(tree.root, inner, [tree.layers[1][1]])


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(MerkleError, match="1.."):
        MerkleTree.from_items([])
    with pytest.raises(MerkleError, match="32 bytes"):
        leaf_hash(b"short")
    with pytest.raises(MerkleError, match="leaf index"):
        MerkleTree.from_items(items(3)).proof(3)
    assert not verify_proof(merkle_root(items(2)), items(2)[0], [b"\x00" * 31])


def test_shared_vectors_match_this_implementation():
    """tests/vectors/merkle.json is what the forge tests check against OpenZeppelin."""
    vectors = json.loads(VECTORS.read_text())
    for case in vectors["cases"]:
        its = [bytes.fromhex(x[2:]) for x in case["items"]]
        tree = MerkleTree.from_items(its)
        assert "0x" + tree.root.hex() == case["root"]
        for i, proof in enumerate(case["proofs"]):
            assert ["0x" + p.hex() for p in tree.proof(i)] == proof
