"""`thinkmesh node doctor --config F [--rpc URL --ledger A]`: one PASS/FAIL/SKIP line per check,
each failure with its fix; exit code 1 when any check failed. Checks live in `doctor.py` (this
machine) and `doctor_chain.py` (the chain and the mesh)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `doctor` to the `node` command's subparsers."""
    doctor = commands.add_parser(
        "doctor", help="check this machine, the chain and the bootstrap peers before `node run`",
        description="Python, torch, CUDA, the base model and whether a round fits the device, p2pd, ports, RPC, "
                    "ledger, bootstrap peers, keystore, registration, disk.",
    )
    doctor.add_argument("--config", required=True, help="node TOML file")
    doctor.add_argument("--rpc", help="EVM JSON-RPC URL; fills [chain] rpc_url")
    doctor.add_argument("--ledger", help="ThinkMeshLedger address; fills [chain] ledger")
    doctor.add_argument("--p2pd", type=Path, default=None,
                        help="check this p2pd binary instead of hivemind's bundled one")
    doctor.set_defaults(handler=doctor_command)


def run_doctor(config, p2pd_path: Path | None = None, report: Callable[[object], None] = lambda check: None) -> list:
    """Every check in order; `report` sees each `Check` as soon as it is known (slow ones take seconds)."""
    from thinkmesh.node.ops import doctor, doctor_chain, doctor_model
    
    checks: list = []

    def add(*found) -> None:
        for check in found:
            checks.append(check)
            report(check)

    add(doctor.check_python(), doctor.check_torch())
    model_bytes = doctor.directory_bytes(config.base_model)
    add(doctor.check_device(config.device, model_bytes))
    base, model_config = doctor_model.check_base_model(config.base_model)
    add(base)
    strategy = config.strategy.spec()
    free = doctor_model.device_free_bytes(config.device, config.memory.cpu_cap_mb * 1024 * 1024)
    add(doctor_model.check_fit(model_config, config.dtype, config.device, strategy.group_size,
                               strategy.max_new_tokens, strategy.beta > 0, free, config.memory.free_fraction))
    p2pd = doctor.check_p2pd(p2pd_path)
    add(p2pd)
    endpoints = [(host, port, "[network] host_maddrs") for host, port in doctor.tcp_ports(config.network.host_maddrs)]
    endpoints.append((config.observability.http_host, config.observability.http_port, "[observability] http_port"))
    add(*doctor.check_ports(endpoints))
    rpc_checks, deployment, listed = doctor_chain.check_rpc(config)
    add(*rpc_checks)
    add(*doctor_chain.check_bootstrap(config, listed, dial=not p2pd.failed))
    keystore, keys = doctor_chain.check_keystore(config)
    add(keystore)
    if config.chain is not None:
        add(*doctor_chain.check_registration(config, deployment, keys))
    add(doctor.check_disk(config.data_dir, model_bytes))
    return checks


def doctor_command(args: argparse.Namespace) -> int:
    from thinkmesh.node.config import load_node_config

    config = load_node_config(args.config, rpc_url=args.rpc, ledger=args.ledger)
    checks = run_doctor(config, args.p2pd, report=lambda check: print(check.line(), flush=True))
    failures = [check for check in checks if check.failed]
    print(f"node doctor: {len(checks) - len(failures)} of {len(checks)} checks passed"
          + (f"; {len(failures)} failed" if failures else ""))
    return 1 if failures else 0
