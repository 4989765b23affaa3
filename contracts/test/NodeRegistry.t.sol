// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

contract NodeRegistryTest is LedgerFixture {
    address internal alice = address(0xA11CE);

    function _approve(address account, uint256 amount) internal {
        mint(account, amount);
        vm.prank(account);
        token.approve(address(ledger), amount);
    }

    function test_register_recordsNodeAndPullsStake() public {
        _approve(alice, MIN_STAKE);
        bytes32 key = ed25519KeyOf(alice);
        bytes memory peerId = peerIdOf(alice);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeRegistered(
            alice, key, peerId, bindingOf(alice), MIN_STAKE, "dapo", "/ip4/10.0.0.1/tcp/1"
        );
        vm.prank(alice);
        ledger.register(key, peerId, bindingOf(alice), MIN_STAKE, "dapo", "/ip4/10.0.0.1/tcp/1");

        IThinkMeshLedger.NodeView memory n = ledger.node(alice);
        vm.assertEq(uint256(n.status), uint256(IThinkMeshLedger.NodeStatus.Active), "status");
        vm.assertEq(n.stake, MIN_STAKE, "stake");
        vm.assertEq(n.ed25519Key, key, "key");
        vm.assertEq(n.peerId, peerId, "peer id");
        vm.assertEq(n.strategy, "dapo", "strategy");
        vm.assertEq(n.endpoint, "/ip4/10.0.0.1/tcp/1", "endpoint");
        vm.assertEq(n.registeredAt, block.timestamp, "registeredAt");
        vm.assertEq(token.balanceOf(alice), 0, "stake pulled");
        vm.assertEq(ledger.poolTotals().staked, MIN_STAKE, "staked total");
        assertBooksBalance();
    }

    function test_register_revertsWhenAlreadyRegistered() public {
        registerNode(alice, MIN_STAKE);
        _approve(alice, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.NodeAlreadyRegistered.selector, alice));
        vm.prank(alice);
        ledger.register(keccak256("other key"), peerIdOf(alice), bindingOf(alice), MIN_STAKE, "grpo", "");
    }

    function test_register_revertsOnZeroKey() public {
        _approve(alice, MIN_STAKE);
        vm.expectRevert(IThinkMeshLedger.InvalidEd25519Key.selector);
        vm.prank(alice);
        ledger.register(bytes32(0), peerIdOf(alice), bindingOf(alice), MIN_STAKE, "grpo", "");
    }

    /// Keys are not unique on chain: a squatter cannot lock a key out (it cannot sign its binding,
    /// so the coordinator ignores its registration); the key's owner still registers.
    function test_register_allowsTheSameKeyFromAnotherAddress() public {
        registerNode(alice, MIN_STAKE);
        address bob = address(0xB0B);
        _approve(bob, MIN_STAKE);
        vm.prank(bob);
        ledger.register(ed25519KeyOf(alice), peerIdOf(bob), bindingOf(bob), MIN_STAKE, "grpo", "");
        vm.assertEq(ledger.node(bob).ed25519Key, ed25519KeyOf(alice), "both registered");
    }

    function test_register_revertsOnWrongBindingLength() public {
        _approve(alice, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.InvalidBinding.selector, 128, 129));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), new bytes(128), MIN_STAKE, "grpo", "");
    }

    function test_register_revertsOnEmptyOrLongPeerId() public {
        _approve(alice, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.InvalidPeerId.selector, 0, 64));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), "", bindingOf(alice), MIN_STAKE, "grpo", "");

        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.InvalidPeerId.selector, 65, 64));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), new bytes(65), bindingOf(alice), MIN_STAKE, "grpo", "");
    }

    function test_register_revertsOnLongMetadata() public {
        _approve(alice, MIN_STAKE);
        string memory longStrategy = string(new bytes(65));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "strategy", 65, 64));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), bindingOf(alice), MIN_STAKE, longStrategy, "");

        string memory longEndpoint = string(new bytes(257));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "endpoint", 257, 256));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), bindingOf(alice), MIN_STAKE, "grpo", longEndpoint);
    }

    function test_register_revertsBelowMinStake() public {
        _approve(alice, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.StakeBelowMinimum.selector, MIN_STAKE - 1, MIN_STAKE));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), bindingOf(alice), MIN_STAKE - 1, "grpo", "");
    }

    function test_register_revertsOnZeroStakeEvenWithoutMinimum() public {
        vm.prank(admin);
        ledger.setMinStake(0);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.StakeBelowMinimum.selector, 0, 0));
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), bindingOf(alice), 0, "grpo", "");
    }

    function test_register_revertsWithoutAllowance() public {
        mint(alice, MIN_STAKE);
        vm.expectRevert(
            abi.encodeWithSignature(
                "ERC20InsufficientAllowance(address,uint256,uint256)", address(ledger), 0, MIN_STAKE
            )
        );
        vm.prank(alice);
        ledger.register(ed25519KeyOf(alice), peerIdOf(alice), bindingOf(alice), MIN_STAKE, "grpo", "");
    }

    function test_addStake_increasesStake() public {
        registerNode(alice, MIN_STAKE);
        _approve(alice, 5 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.StakeAdded(alice, 5 ether, MIN_STAKE + 5 ether);
        vm.prank(alice);
        ledger.addStake(5 ether);
        vm.assertEq(ledger.node(alice).stake, MIN_STAKE + 5 ether, "stake");
        assertBooksBalance();
    }

    function test_addStake_revertsWhenNotActive() public {
        vm.expectRevert(
            abi.encodeWithSelector(IThinkMeshLedger.NodeNotActive.selector, alice, IThinkMeshLedger.NodeStatus.None)
        );
        vm.prank(alice);
        ledger.addStake(1);
    }

    function test_addStake_revertsOnZero() public {
        registerNode(alice, MIN_STAKE);
        vm.expectRevert(IThinkMeshLedger.ZeroAmount.selector);
        vm.prank(alice);
        ledger.addStake(0);
    }

    function test_addStake_revertsPastUint96() public {
        registerNode(alice, MIN_STAKE);
        uint96 amount = type(uint96).max;
        uint256 total = uint256(MIN_STAKE) + amount;
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AmountTooLarge.selector, total, type(uint96).max));
        vm.prank(alice);
        ledger.addStake(amount);
    }

    function test_updateMetadata_replacesStrategyAndEndpoint() public {
        registerNode(alice, MIN_STAKE);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeMetadataUpdated(alice, "gspo", "/dns/node.example/tcp/9");
        vm.prank(alice);
        ledger.updateMetadata("gspo", "/dns/node.example/tcp/9");
        vm.assertEq(ledger.node(alice).strategy, "gspo", "strategy");
        vm.assertEq(ledger.node(alice).endpoint, "/dns/node.example/tcp/9", "endpoint");
    }

    function test_updateMetadata_revertsForUnknownNode() public {
        vm.expectRevert(
            abi.encodeWithSelector(IThinkMeshLedger.NodeNotActive.selector, alice, IThinkMeshLedger.NodeStatus.None)
        );
        vm.prank(alice);
        ledger.updateMetadata("gspo", "");
    }

    function test_updateMetadata_revertsOnLongField() public {
        registerNode(alice, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "endpoint", 300, 256));
        vm.prank(alice);
        ledger.updateMetadata("gspo", string(new bytes(300)));
    }

    function test_beginUnbonding_startsDelay() public {
        registerNode(alice, MIN_STAKE);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.UnbondingStarted(alice, MIN_STAKE, block.timestamp + UNBONDING_DELAY);
        vm.prank(alice);
        ledger.beginUnbonding();
        IThinkMeshLedger.NodeView memory n = ledger.node(alice);
        vm.assertEq(uint256(n.status), uint256(IThinkMeshLedger.NodeStatus.Unbonding), "status");
        vm.assertEq(n.unbondingEnds, block.timestamp + UNBONDING_DELAY, "ends");
    }

    function test_beginUnbonding_revertsWhenAlreadyUnbonding() public {
        registerNode(alice, MIN_STAKE);
        vm.prank(alice);
        ledger.beginUnbonding();
        vm.expectRevert(
            abi.encodeWithSelector(
                IThinkMeshLedger.NodeNotActive.selector, alice, IThinkMeshLedger.NodeStatus.Unbonding
            )
        );
        vm.prank(alice);
        ledger.beginUnbonding();
    }

    function test_withdrawStake_revertsBeforeDelay() public {
        registerNode(alice, MIN_STAKE);
        vm.prank(alice);
        ledger.beginUnbonding();
        uint256 ends = block.timestamp + UNBONDING_DELAY;
        vm.warp(ends - 1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.UnbondingNotFinished.selector, alice, ends, ends - 1));
        vm.prank(alice);
        ledger.withdrawStake();
    }

    function test_withdrawStake_revertsWithoutUnbonding() public {
        registerNode(alice, MIN_STAKE);
        vm.expectRevert(
            abi.encodeWithSelector(
                IThinkMeshLedger.NodeNotUnbonding.selector, alice, IThinkMeshLedger.NodeStatus.Active
            )
        );
        vm.prank(alice);
        ledger.withdrawStake();
    }

    function test_withdrawStake_returnsStakeAfterDelay() public {
        registerNode(alice, MIN_STAKE);
        vm.prank(alice);
        ledger.beginUnbonding();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.StakeWithdrawn(alice, MIN_STAKE);
        vm.prank(alice);
        uint256 amount = ledger.withdrawStake();
        vm.assertEq(amount, MIN_STAKE, "returned");
        vm.assertEq(token.balanceOf(alice), MIN_STAKE, "balance");
        vm.assertEq(uint256(ledger.node(alice).status), uint256(IThinkMeshLedger.NodeStatus.Exited), "exited");
        vm.assertEq(ledger.poolTotals().staked, 0, "staked total");
        assertBooksBalance();
    }

    function test_withdrawStake_revertsTwice() public {
        registerNode(alice, MIN_STAKE);
        vm.prank(alice);
        ledger.beginUnbonding();
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(alice);
        ledger.withdrawStake();
        vm.expectRevert(
            abi.encodeWithSelector(
                IThinkMeshLedger.NodeNotUnbonding.selector, alice, IThinkMeshLedger.NodeStatus.Exited
            )
        );
        vm.prank(alice);
        ledger.withdrawStake();
    }

    function test_node_unknownAddressHasStatusNone() public view {
        IThinkMeshLedger.NodeView memory n = ledger.node(stranger);
        vm.assertEq(uint256(n.status), uint256(IThinkMeshLedger.NodeStatus.None), "status");
        vm.assertEq(n.stake, 0, "stake");
    }
}
