"""The test-only behaviour is plugged into the daemons, not built in: the node's contribution hook
with a cheat mode behind it, and settlement's crash points with a crash behind them."""

from __future__ import annotations

import pytest

from tests.verification_world import world
from thinkmesh.coordinator.settlement.round_settlement import SETTLEMENT_STEPS, RoundSettler, SettlementJournal
from thinkmesh.devnet.cheating_node import CheatHook
from thinkmesh.devnet.cheats import CheatError
from thinkmesh.devnet.crashing_coordinator import CrashAt
from thinkmesh.node.config import NodeConfig
from thinkmesh.node.work.contribution_hook import ContributionHook
from thinkmesh.protocol.rules.errors import ProtocolError

pytestmark = pytest.mark.timeout(240)


def test_a_production_node_config_has_no_cheat_key():
    assert "cheat" not in NodeConfig.model_fields


def test_the_base_hook_sends_the_honest_contribution_itself():
    w = world()
    hook = ContributionHook()
    assert hook.replace_contribution(w.round, w.honest[0], identity=w.nodes[0], model=w.model,
                                     tokenizer=w.tokenizer) is w.honest[0]


def _replace(hook: CheatHook, announcement, honest):
    w = world()
    return hook.replace_contribution(announcement, honest, identity=w.nodes[0], model=w.model, tokenizer=w.tokenizer)


def test_a_replay_cheater_sends_honest_work_until_it_has_an_earlier_contribution():
    w = world()
    hook = CheatHook("replay")
    first = _replace(hook, w.round, w.honest[0])
    assert first is w.honest[0]  # nothing to replay yet
    second = _replace(hook, w.round, w.honest[1])
    assert second is not w.honest[1] and second.round_id == w.round.round_id
    assert second.samples == w.honest[0].samples  # the previous round's work, re-bound


def test_a_stale_model_cheater_keeps_a_copy_of_the_version_a_new_one_replaced():
    w = world()
    hook = CheatHook("stale-model")
    assert _replace(hook, w.round, w.honest[0]) is w.honest[0]  # no older version held yet
    hook.model_replaced(w.old_model)
    assert hook.stale_model is not w.old_model  # a copy: the daemon overwrites the live model in place
    assert _replace(hook, w.round, w.honest[0]) is not w.honest[0]


def test_a_cheat_hook_refuses_a_mode_no_running_node_can_make():
    for mode in ("copy-peer", "free-money"):
        with pytest.raises(CheatError, match="expected one of fake-rewards"):
            CheatHook(mode)


def test_settlement_calls_its_step_hook_at_each_crash_point_in_order(tmp_path):
    reached = []
    settler = RoundSettler(SettlementJournal(tmp_path / "settlement"), step_hook=lambda *at: reached.append(at))
    settler.open_round(1, b"\x01" * 32, b"\x02" * 32)
    intent = settler.record(1, b"\x02" * 32, [], [], 0.0)
    settler.send(intent)
    assert reached == [("after-intent", 1), ("before-settle", 1)]  # after-settle: only with a chain (e2e)
    assert SETTLEMENT_STEPS == ("after-intent", "before-settle", "after-settle")


def test_crash_at_parses_a_point_and_an_optional_round():
    assert CrashAt.parse("after-intent@2") == CrashAt("after-intent", 2)
    assert CrashAt.parse("after-settle") == CrashAt("after-settle", None)
    CrashAt("after-intent", 2)("after-intent", 1)  # another round: returns
    CrashAt("after-intent", 2)("before-settle", 2)  # another point: returns
    for bad in ("during-settle", "after-intent@x", "after-intent@"):
        with pytest.raises(ProtocolError, match="--crash-at: expected POINT or POINT@ROUND"):
            CrashAt.parse(bad)
