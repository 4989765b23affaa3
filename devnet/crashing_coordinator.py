"""A coordinator that dies at a chosen settlement step, for the crash tests: the production
coordinator with a `CrashAt` plugged into its settlement hook (coordinator/settlement/round_settlement.py's crash points).

    thinkmesh devnet coordinator-run --config coordinator.toml --crash-at before-settle@1

runs exactly what `thinkmesh coordinator run --config coordinator.toml` runs, and is killed the first
time settlement reaches the point (`after-intent`, `before-settle` or `after-settle`), in round ROUND
when `@ROUND` is given, in any round otherwise. Without `--crash-at` it runs as `coordinator run`.
A process-group leader (as the tests start it, `start_new_session=True`) SIGKILLs its whole group,
the DHT process and p2pd included, as a power cut would; any other process exits with
`CRASH_EXIT_CODE` at once, skipping every cleanup.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from dataclasses import dataclass

logger = logging.getLogger(__name__)
CRASH_EXIT_CODE = 97  # when not a process-group leader; a leader dies of SIGKILL with its children


@dataclass(frozen=True)
class CrashAt:
    """The settlement step hook that kills the process at `point` (of `round_id`, or of any round if None)."""

    point: str
    round_id: int | None = None

    @classmethod
    def parse(cls, text: str) -> CrashAt:
        """`POINT` or `POINT@ROUND`, POINT one of settlement.SETTLEMENT_STEPS."""
        from thinkmesh.coordinator.settlement.round_settlement import SETTLEMENT_STEPS
        from thinkmesh.protocol.rules.errors import ProtocolError

        point, at, round_text = text.partition("@")
        if point not in SETTLEMENT_STEPS or (at and not round_text.isdigit()):
            raise ProtocolError(f"--crash-at: expected POINT or POINT@ROUND with POINT one of "
                                f"{', '.join(SETTLEMENT_STEPS)}, got {text!r}")
        return cls(point, int(round_text) if at else None)

    def __call__(self, point: str, round_id: int) -> None:
        if point != self.point or (self.round_id is not None and round_id != self.round_id):
            return
        logger.warning("crash hook: killed at %s of round %d", point, round_id)
        logging.shutdown()
        if os.getpgid(0) == os.getpid():  # a session leader: SIGKILL the DHT and p2pd too
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(CRASH_EXIT_CODE)


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `coordinator-run` to the `devnet` command's subparsers."""
    run = commands.add_parser(
        "coordinator-run", help="tests: `coordinator run` that dies at a settlement step",
        description="The production coordinator, configured as by `thinkmesh coordinator run`, killed when "
                    "settlement reaches --crash-at.",
    )
    run.add_argument("--config", required=True, help="coordinator TOML file")
    run.add_argument("--crash-at", metavar="POINT[@ROUND]", default=None,
                     help="after-intent, before-settle or after-settle, optionally of round ROUND only")
    run.set_defaults(handler=run_crashing_coordinator)


def run_crashing_coordinator(args: argparse.Namespace) -> int:
    from thinkmesh.coordinator.ops.commands import run_coordinator

    hook = CrashAt.parse(args.crash_at) if args.crash_at else None
    return run_coordinator(args, settlement_hook=hook)
