"""Regenerates tests/vectors/merkle.json: `python tests/vectors/make_merkle_vectors.py`.

The vectors are shared with the forge tests, which check each proof with OpenZeppelin's
MerkleProof; the Python tests check that this file still matches protocol/rules/merkle.py.
"""

import json
import pathlib

from eth_utils import keccak

from thinkmesh.protocol.rules.merkle import MerkleTree, leaf_hash

SIZES = (1, 2, 3, 5, 8)


def build_vectors() -> dict:
    cases = []
    for size in SIZES:
        items = [keccak(f"thinkmesh-sample-{size}-{i}".encode()) for i in range(size)]
        tree = MerkleTree.from_items(items)
        cases.append(
            {
                "items": ["0x" + item.hex() for item in items],
                "leaves": ["0x" + leaf_hash(item).hex() for item in items],
                "root": "0x" + tree.root.hex(),
                "proofs": [["0x" + p.hex() for p in tree.proof(i)] for i in range(size)],
            }
        )
    return {"scheme": "keccak256(keccak256(item)), sorted pairs", "cases": cases}


if __name__ == "__main__":
    path = pathlib.Path(__file__).with_name("merkle.json")
    path.write_text(json.dumps(build_vectors(), indent=1) + "\n")
    print(f"wrote {path}")
