"""A node that cheats, for the devnet and the end-to-end tests: the production node daemon with a
`CheatHook` plugged into its contribution hook (node/work/contribution_hook.py).

    thinkmesh devnet node-run --config node.toml --cheat MODE

runs exactly what `thinkmesh node run --config node.toml` runs, except that each round's honest
contribution goes through `devnet/cheats.apply_cheat(MODE, ...)` before it is sent. `devnet up
--cheater MODE` starts its cheater this way. A mode with nothing to cheat with yet (stale-model
before a second version, replay in its first round) or whose cheat changes nothing this round sends
the honest work itself, and the round's history then records no `contribution_hook`, so a test never
counts honest work as a cheat that went unnoticed.
"""

from __future__ import annotations

import argparse
import copy
import logging

from thinkmesh.node.work.contribution_hook import ContributionHook
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement

logger = logging.getLogger(__name__)


class CheatHook(ContributionHook):
    """Turns each round's honest contribution into `mode`'s (one of `cheats.NODE_CHEAT_MODES`).

    Keeps what a cheater needs across rounds: the version a new one replaced (stale-model) and its
    own last honest contribution (replay). Not thread-safe; the daemon calls it from one thread."""

    def __init__(self, mode: str):
        from thinkmesh.devnet.cheats import NODE_CHEAT_MODES, CheatError

        if mode not in NODE_CHEAT_MODES:
            raise CheatError(f"--cheat: expected one of {', '.join(NODE_CHEAT_MODES)}, got {mode!r}")
        self.name = self.mode = mode
        self.stale_model = None
        self.last_honest: Contribution | None = None

    def model_replaced(self, previous) -> None:
        if self.mode == "stale-model":
            self.stale_model = copy.deepcopy(previous)

    def replace_contribution(self, announcement: RoundAnnouncement, honest: Contribution, *, identity, model,
                             tokenizer) -> Contribution:
        from thinkmesh.devnet.cheats import CheatInputs, apply_cheat

        round_id, mode = announcement.round_id, self.mode
        ready = {"stale-model": self.stale_model is not None, "replay": self.last_honest is not None}.get(mode, True)
        contribution = honest
        if ready:
            contribution = apply_cheat(mode, CheatInputs(
                announcement=announcement, identity=identity, honest=honest, model=model, tokenizer=tokenizer,
                stale_model=self.stale_model, old=self.last_honest, seed=round_id,
            ))
        self.last_honest = honest
        if not ready:
            logger.info("round %d: %s has nothing to cheat with yet; sending honest work", round_id, mode)
        elif contribution is honest:
            logger.info("round %d: %s changes nothing this round; sending honest work", round_id, mode)
        else:
            logger.warning("round %d: sending a %s contribution (cheat mode)", round_id, mode)
        return contribution


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `node-run` to the `devnet` command's subparsers."""
    run = commands.add_parser(
        "node-run", help="tests and the devnet: `node run` with a cheat mode plugged in",
        description="The production node daemon, configured as by `thinkmesh node run`, whose contributions "
                    "a cheat mode (devnet/cheats.py) replaces.",
    )
    run.add_argument("--config", required=True, help="node TOML file")
    run.add_argument("--cheat", metavar="MODE", required=True, help="a mode of devnet/cheats.py (copy-peer excepted)")
    run.set_defaults(handler=run_cheating_node)


def run_cheating_node(args: argparse.Namespace) -> int:
    from thinkmesh.node.ops.daemon_commands import run_node

    return run_node(args, contribution_hook=CheatHook(args.cheat))
