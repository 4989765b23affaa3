"""The serving subcommands. Heavy imports (torch, transformers, hivemind) stay inside handlers.

    thinkmesh serve --model DIR [--announce --initial-peers MADDR ...]
    thinkmesh verify-receipt RECEIPT.json --model DIR
    thinkmesh ask "QUESTION" --model-hash HEX --initial-peers MADDR ... [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

SERVE_IDENTITY_FILE = "serve_identity.key"


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="an OpenAI-compatible API whose every answer carries a signed receipt")
    serve.add_argument("--model", required=True, help="model directory (any causal LM saved with save_pretrained)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--model-name", default=None, help="the name clients use (default: the directory's name)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    serve.add_argument("--dtype", default="float32", help="compute dtype: float32, bfloat16 or float16")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    serve.add_argument("--identity", default=None,
                       help=f"Ed25519 seed file of the server key, made if missing (default $THINKMESH_HOME/{SERVE_IDENTITY_FILE})")
    serve.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this get 429")
    serve.add_argument("--max-batch", type=int, default=16, help="rows generated together")
    serve.add_argument("--batch-window-ms", type=float, default=20.0,
                       help="how long a batch may wait for as many requests as the previous batch had")
    serve.add_argument("--max-tokens-limit", type=int, default=512)
    serve.add_argument("--default-max-tokens", type=int, default=64)
    serve.add_argument("--max-n", type=int, default=8)
    serve.add_argument("--request-timeout", type=float, default=600.0)
    serve.add_argument("--announce", action="store_true", help="announce this server in the hivemind DHT")
    serve.add_argument("--initial-peers", nargs="*", default=[], help="DHT multiaddrs to join (none: start a DHT)")
    serve.add_argument("--host-maddrs", nargs="*", default=["/ip4/127.0.0.1/tcp/0"], help="where the DHT listens")
    serve.add_argument("--public-url", default=None, help="the URL to announce (default: the one it listens on)")
    serve.add_argument("--announce-ttl", type=float, default=300.0, help="seconds a DHT record lives")
    serve.set_defaults(handler=serve_command)

    verify = subparsers.add_parser("verify-receipt", help="re-check a served answer's receipt: agree/disagree")
    verify.add_argument("receipt", help="a receipt JSON file, or a whole response body carrying one")
    verify.add_argument("--model", required=True, help="the model directory the receipt claims")
    verify.add_argument("--device", default="cpu")
    verify.add_argument("--seed", type=int, default=None, help="require the receipt to be drawn under this client seed")
    verify.add_argument("--server-key", default=None, help="require this server key (0x-hex)")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(handler=verify_receipt_command)

    ask = subparsers.add_parser("ask", help="ask the servers of a model found in the DHT; re-check their answers")
    ask.add_argument("question")
    ask.add_argument("--model-hash", required=True, help="the model's hash (0x-hex)")
    ask.add_argument("--initial-peers", nargs="+", required=True, help="DHT multiaddrs to join")
    ask.add_argument("--model", default=None, help="the model directory, to re-check answers locally")
    ask.add_argument("--verify-share", type=float, default=1.0, help="share of answers re-checked token by token")
    ask.add_argument("--temperature", type=float, default=0.7)
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--max-tokens", type=int, default=64)
    ask.add_argument("--seed", type=int, default=None, help="the public seed (default: a random one)")
    ask.add_argument("--timeout", type=float, default=60.0, help="seconds per server")
    ask.add_argument("--discover-timeout", type=float, default=15.0, help="seconds to wait for a server in the DHT")
    ask.add_argument("--device", default="cpu")
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.set_defaults(handler=ask_command)


def _hex_bytes(text: str, what: str, size: int) -> bytes:
    from thinkmesh.protocol.rules.errors import ProtocolError

    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise ProtocolError(f"{what}: expected {size} bytes of hex, got {text!r}") from exc
    if len(value) != size:
        raise ProtocolError(f"{what}: expected {size} bytes of hex, got {len(value)}")
    return value


def load_identity(path: str | None):
    """The server key from its seed file, made (mode 0600) when missing."""
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.runtime.atomic_files import PRIVATE_MODE, write_atomic

    path = Path(path) if path else Path(os.environ.get("THINKMESH_HOME", Path.home() / ".thinkmesh")) / SERVE_IDENTITY_FILE
    if path.exists():
        return NodeIdentity.from_seed(path.read_bytes())
    identity = NodeIdentity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, identity.seed(), mode=PRIVATE_MODE, exclusive=True)
    return identity


def _print_event(**fields) -> None:
    print(json.dumps(fields), flush=True)


# ---- serve ---------------------------------------------------------------------------------
def serve_command(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    return asyncio.run(_serve(args, identity))


async def _serve(args: argparse.Namespace, identity) -> int:
    dht = None
    if args.announce:  # the DHT forks its process before torch starts threads
        from thinkmesh.protocol.p2p.serve_records import start_dht

        dht = await asyncio.to_thread(start_dht, [], args.initial_peers, args.host_maddrs, identity)
    import torch

    from thinkmesh.node.serve.app import ServeServer
    from thinkmesh.node.serve.engine import ServeEngine, load_served_model
    from thinkmesh.node.serve.openai_schema import ServeLimits
    from thinkmesh.node.model.model_dir import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    engine = ServeEngine(lambda: load_served_model(args.model, device, args.dtype, args.model_name),
                         max_queue=args.max_queue, max_batch=args.max_batch,
                         batch_window_s=args.batch_window_ms / 1000)
    limits = ServeLimits(args.default_max_tokens, args.max_tokens_limit, args.max_n)
    server = ServeServer(engine, identity, limits, args.request_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    announcer = None
    try:
        url = await server.start(args.host, args.port)
        _print_event(event="listening", url=url, server_key="0x" + identity.public_key.hex(),
                     dht_maddrs=[str(m) for m in dht.get_visible_maddrs()] if dht else [])
        if not await asyncio.to_thread(engine.wait_ready, 3600.0):
            print(f"thinkmesh serve: the model did not load: {engine.error}", file=sys.stderr)
            return 1
        served = engine.served
        _print_event(event="ready", model=served.name, model_hash="0x" + served.model_hash.hex(), device=device)
        if dht is not None:
            from thinkmesh.protocol.p2p.serve_records import ServerAnnouncer, ServerRecordValidator

            await asyncio.to_thread(dht.add_validators, [ServerRecordValidator([served.model_hash])])
            announcer = ServerAnnouncer(dht, identity, served.model_hash, args.public_url or url, args.announce_ttl)
            await announcer.announce_once()
            _print_event(event="announced", url=announcer.url, expires_in_s=args.announce_ttl)
            announcer = asyncio.create_task(announcer.run())
        await stop.wait()
        return 0
    finally:
        if announcer is not None:
            announcer.cancel()
        await server.stop()
        if dht is not None:
            dht.shutdown()


# ---- verify-receipt ------------------------------------------------------------------------
def verify_receipt_command(args: argparse.Namespace) -> int:
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.serve.receipts_check import check_receipt_file, format_check

    server_key = _hex_bytes(args.server_key, "--server-key", 32) if args.server_key else None
    model = load_model(args.model, args.device, "float32")
    check = check_receipt_file(args.receipt, model, load_tokenizer(args.model), seed=args.seed, server_key=server_key)
    if args.json:
        print(json.dumps({"agrees": check.agrees, "reason": check.reason, "detail": check.detail, "choice": check.choice,
                          "position": check.position, "claimed_token": check.claimed_token,
                          "expected_token": check.expected_token}))
    else:
        print(format_check(check))
    return 0 if check.agrees else 1


# ---- ask -----------------------------------------------------------------------------------
def ask_command(args: argparse.Namespace) -> int:
    from thinkmesh.node.serve.ask import AskSettings
    from thinkmesh.protocol.rules.errors import ProtocolError

    model_hash = _hex_bytes(args.model_hash, "--model-hash", 32)
    if not 0 <= args.verify_share <= 1:
        raise ProtocolError(f"--verify-share: expected a share in [0, 1], got {args.verify_share}")
    if args.verify_share > 0 and args.model is None:
        raise ProtocolError("--verify-share > 0 re-checks answers on your copy of the model: pass --model DIR "
                            "(or --verify-share 0 to check signatures and settings only)")
    settings = AskSettings(args.temperature, args.top_p, args.max_tokens, args.verify_share, args.timeout)
    result = asyncio.run(_ask(args, model_hash, settings))
    if args.json:
        print(json.dumps(result.summary()))
    else:
        for url, reason in result.failures:
            print(f"passed over {url}: {reason}", file=sys.stderr)
        how = "every token re-checked" if result.replayed else "signature and settings checked"
        print(f"answered by {result.server.url} ({how}):", file=sys.stderr)
        print(result.answer)
    return 0


async def _ask(args: argparse.Namespace, model_hash: bytes, settings):
    from thinkmesh.node.serve.ask import AskError, ask
    from thinkmesh.protocol.p2p.serve_records import start_dht, wait_for_servers

    dht = await asyncio.to_thread(start_dht, [model_hash], args.initial_peers, (), None, True)
    try:
        local = None
        if args.model is not None:
            local = await asyncio.to_thread(_local_model, args.model, args.device, model_hash)
        servers = await wait_for_servers(dht, model_hash, args.discover_timeout)
        if not servers:
            raise AskError(f"no server of model 0x{model_hash.hex()} found in the DHT within {args.discover_timeout:.0f} s")
        return await ask(args.question, servers, settings, local, args.seed)
    finally:
        dht.shutdown()


def _local_model(directory: str, device: str, model_hash: bytes):
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.serve.ask import LocalModel
    from thinkmesh.protocol.rules.errors import ProtocolError
    from thinkmesh.protocol.rules.receipts import served_model_hash

    model = load_model(directory, device, "float32")
    actual = served_model_hash(model)
    if actual != model_hash:
        raise ProtocolError(f"--model {directory} hashes to 0x{actual.hex()}, not the asked 0x{model_hash.hex()}")
    return LocalModel(model, load_tokenizer(directory), actual)
