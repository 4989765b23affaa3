// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

/// @notice The ledger's `verifyTrace` accepts exactly the proofs of `thinkmesh.protocol.merkle`,
/// checked on the shared vectors in tests/vectors/merkle.json (written by the Python side).
contract MerkleVectorsTest is LedgerFixture {
    string internal constant VECTORS = "../tests/vectors/merkle.json";

    function _case(uint256 i) internal pure returns (string memory) {
        return string.concat(".cases[", vm.toString(i), "]");
    }

    function test_verifyTrace_acceptsEveryVectorProof() public {
        string memory json = vm.readFile(VECTORS);
        uint256 proofsChecked;
        uint64 roundId;
        for (uint256 c; vm.keyExistsJson(json, _case(c)); ++c) {
            string memory path = _case(c);
            bytes32[] memory items = vm.parseJsonBytes32Array(json, string.concat(path, ".items"));
            bytes32 root = vm.parseJsonBytes32(json, string.concat(path, ".root"));
            roundId = uint64(c + 1);
            openRound(roundId);
            settle(roundId, root, new IThinkMeshLedger.Award[](0));
            for (uint256 i; i < items.length; ++i) {
                string memory proofKey = string.concat(path, ".proofs[", vm.toString(i), "]");
                bytes32[] memory proof = vm.parseJsonBytes32Array(json, proofKey);
                vm.assertTrue(ledger.verifyTrace(roundId, items[i], proof), "vector proof verifies");
                vm.assertFalse(ledger.verifyTrace(roundId, keccak256(abi.encode(items[i])), proof), "wrong item");
                ++proofsChecked;
            }
        }
        vm.assertGe(proofsChecked, 4, "the vector file holds proofs");
    }
}
