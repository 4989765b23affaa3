// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ThinkMeshToken} from "../src/ThinkMeshToken.sol";
import {TestBase} from "./utils/TestBase.sol";

contract ThinkMeshTokenTest is TestBase {
    address internal admin = address(0xAD);
    ThinkMeshToken internal token;

    function setUp() public {
        token = new ThinkMeshToken(admin);
    }

    function test_metadata() public view {
        vm.assertEq(token.name(), "ThinkMesh Reward", "name");
        vm.assertEq(token.symbol(), "MESH", "symbol");
        vm.assertEq(token.decimals(), 18, "decimals");
    }

    function test_mint_byMinter() public {
        vm.prank(admin);
        token.mint(address(0xBEEF), 42);
        vm.assertEq(token.balanceOf(address(0xBEEF)), 42, "balance");
        vm.assertEq(token.totalSupply(), 42, "supply");
    }

    function test_mint_onlyMinter() public {
        vm.expectRevert(
            abi.encodeWithSignature(
                "AccessControlUnauthorizedAccount(address,bytes32)", address(0xBEEF), token.MINTER_ROLE()
            )
        );
        vm.prank(address(0xBEEF));
        token.mint(address(0xBEEF), 1);
    }
}
