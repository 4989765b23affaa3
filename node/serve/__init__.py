"""`thinkmesh serve`: an OpenAI-compatible API whose every answer anyone can re-check.

    engine.py          ServeEngine: the bounded job queue and the worker thread that runs the
                       rollout engine (`protocol.rules.rollout.generate`), batched, streaming its steps
    openai_schema.py   request validation (errors name the field), chat prompts, answer text,
                       response and chunk bodies
    app.py             ServeApp / ServeServer: the aiohttp routes, server-sent events, receipts
    receipts_check.py  `thinkmesh verify-receipt`: a receipt file against a model directory
    discovery.py       signed server records in the hivemind DHT: validator, announcer, lookup
    ask.py             `thinkmesh ask`: find servers, ask, re-check, move on from liars
    commands.py        the three subcommands (heavy imports inside the handlers)

The receipt itself (its fields, encoding, signature, stream keys and re-check) is a protocol rule:
`thinkmesh.protocol.rules.receipts`. Nothing here imports `thinkmesh.coordinator`.
"""
