"""The ``voiceagent`` command: serve, inspect configuration, manage the database schema, run the
workers (jobs, knowledge ingestion, outreach scheduling)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import FrameType

from voiceagent import __version__
from voiceagent.auth.cli import admin_commands
from voiceagent.config import ConfigError, Settings, load_settings, settings_as_yaml
from voiceagent.events.bus import MessageBus
from voiceagent.runtime import Runtime, StartupError
from voiceagent.store import Database, StoreUnavailable

log = logging.getLogger("voiceagent")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = load_settings(args.config)
        if getattr(args, "host", None):
            settings = settings.model_copy(
                update={"server": settings.server.model_copy(update={"host": args.host})}
            )
        if getattr(args, "port", None) is not None:
            settings = settings.model_copy(
                update={"server": settings.server.model_copy(update={"port": args.port})}
            )
        _configure_logging(settings.server.log_level)
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler
        return handler(settings, args)
    except (ConfigError, StartupError, StoreUnavailable, OSError) as exc:
        print(f"voiceagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceagent",
        description="Self-hosted real-time voice agent server with event-driven proactive outreach.",
    )
    parser.add_argument("--version", action="version", version=f"voiceagent {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="YAML layered over configs/default.yaml (default: $VOICEAGENT_CONFIG)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the server (HTTP API, health, metrics)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port (0 picks a free port)")
    serve.set_defaults(handler=_cmd_serve)

    config = commands.add_parser("config", help="inspect the effective configuration")
    config_commands = config.add_subparsers(title="config commands", metavar="ACTION", required=True)
    show = config_commands.add_parser("show", parents=[common], help="print the merged settings as YAML")
    show.set_defaults(handler=_cmd_config_show)
    check = config_commands.add_parser("check", parents=[common], help="validate and exit 0 or 1")
    check.set_defaults(handler=_cmd_config_check)

    db = commands.add_parser("db", help="database schema migrations")
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser("upgrade", parents=[common], help="migrate to a revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_cmd_db_upgrade)
    downgrade = db_commands.add_parser("downgrade", parents=[common], help="roll back to a revision")
    downgrade.add_argument("revision", help="target revision, e.g. base or -1")
    downgrade.set_defaults(handler=_cmd_db_downgrade)
    current = db_commands.add_parser("current", parents=[common], help="print the schema revision")
    current.set_defaults(handler=_cmd_db_current)

    outreach = commands.add_parser("outreach", help="proactive outreach: send a prompt by hand")
    outreach_commands = outreach.add_subparsers(title="outreach commands", metavar="ACTION", required=True)
    send = outreach_commands.add_parser(
        "send", parents=[common], help="greet or ask a user (their live call, or their next one)"
    )
    send.add_argument("--user", required=True, help="the user id")
    said = send.add_mutually_exclusive_group(required=True)
    said.add_argument("--text", help="greet with exactly these words")
    said.add_argument("--ask", metavar="QUESTION", help="ask this question")
    said.add_argument("--reason", help="greet about this; the agent phrases it")
    send.add_argument("--expires-in", type=float, default=3600.0, metavar="SECONDS", help="default 3600")
    send.add_argument("--key", help="idempotency key: the same key twice is one event")
    send.set_defaults(handler=_cmd_outreach_send)
    run = outreach_commands.add_parser(
        "run", parents=[common], help="run the scheduled jobs (intent analysis, check-ins) until stopped"
    )
    run.set_defaults(handler=_cmd_outreach_run)

    admin_commands(commands.add_parser("admin", help="dashboard users, API tokens and sessions"), common)

    ingest = commands.add_parser(
        "ingest",
        parents=[common],
        help="run the knowledge ingestion workers and sources (folder, tables) until stopped",
    )
    ingest.set_defaults(handler=_cmd_ingest)

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run queued jobs (synthesize, transcribe, summarize_call) until stopped",
    )
    worker.add_argument("--kinds", metavar="A,B", help="the kinds to run (default: jobs.worker.kinds)")
    worker.add_argument(
        "--concurrency", type=int, metavar="N", help="jobs at once (default: jobs.worker.concurrency)"
    )
    worker.set_defaults(handler=_cmd_worker)

    broker = commands.add_parser("broker", help="a local Apache RocketMQ 5 for development and tests")
    broker_commands = broker.add_subparsers(title="broker commands", metavar="ACTION", required=True)
    fetch = broker_commands.add_parser("fetch", parents=[common], help="download the server jars (Maven)")
    fetch.set_defaults(handler=_cmd_broker, action="fetch")
    start = broker_commands.add_parser("start", parents=[common], help="start, create topics, probe")
    start.add_argument("--fresh", action="store_true", help="wipe the data folder first")
    start.set_defaults(handler=_cmd_broker, action="start")
    stop = broker_commands.add_parser("stop", parents=[common], help="stop both JVMs (keeps data)")
    stop.set_defaults(handler=_cmd_broker, action="stop")
    status = broker_commands.add_parser("status", parents=[common], help="exit 0 when running")
    status.set_defaults(handler=_cmd_broker, action="status")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every firing at INFO


def _cmd_config_show(settings: Settings, _: argparse.Namespace) -> int:
    print(settings_as_yaml(settings), end="")
    return EXIT_OK


def _cmd_config_check(settings: Settings, args: argparse.Namespace) -> int:
    print(f"configuration ok ({args.config or 'defaults'})")
    return EXIT_OK


def _with_database(
    operation: Callable[[Database], Awaitable[None]],
) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, _: argparse.Namespace) -> int:
        async def go() -> None:
            database = Database(settings.store)
            try:
                await database.ping()
                await operation(database)
            finally:
                await database.close()

        asyncio.run(go())
        return EXIT_OK

    return run


def _cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    async def upgrade(database: Database) -> None:
        await database.migrate(args.revision)
        print(f"database at {await database.current_revision()}")

    return _with_database(upgrade)(settings, args)


def _cmd_db_downgrade(settings: Settings, args: argparse.Namespace) -> int:
    async def downgrade(database: Database) -> None:
        await database.downgrade(args.revision)
        print(f"database at {await database.current_revision() or 'base'}")

    return _with_database(downgrade)(settings, args)


def _cmd_db_current(settings: Settings, args: argparse.Namespace) -> int:
    async def current(database: Database) -> None:
        revision = await database.current_revision()
        head = Database.head_revision()
        print(f"{revision or 'base'} (head: {head})")

    return _with_database(current)(settings, args)


def _cmd_outreach_send(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from voiceagent.events import EventBus, PublishFailed
    from voiceagent.events.factory import create_transport
    from voiceagent.outreach.ledger import OutreachLedger
    from voiceagent.outreach.manual import OutreachRequest
    from voiceagent.outreach.publisher import OutreachPublisher, UnknownUser
    from voiceagent.outreach.registry import SessionRegistry
    from voiceagent.server.errors import describe_validation_error

    try:
        request = OutreachRequest(
            user_id=args.user,
            type="ask" if args.ask else "greet",
            text=args.ask or args.text,
            reason=args.reason or "",
            expires_in_s=args.expires_in,
            idempotency_key=args.key,
        )
    except ValidationError as exc:
        print(f"voiceagent: error: {describe_validation_error(exc, 'request')}", file=sys.stderr)
        return EXIT_USAGE
    if _refuse_inprocess(settings):
        return EXIT_FAILURE

    async def go() -> int:
        database = Database(settings.store)
        transport = create_transport(settings.events)
        try:
            await database.ping()
            await transport.start()
            publisher = OutreachPublisher(
                EventBus(transport, settings.events),
                OutreachLedger(database),
                SessionRegistry(database, settings.outreach.stale_after_s),
                f"cli@{settings.node_id}",
            )
            result = await publisher.publish(request.to_event())
        except UnknownUser as exc:
            print(f"voiceagent: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except PublishFailed as exc:
            print(f"voiceagent: error: not published: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await transport.close()
            await database.close()
        print(json.dumps(result.model_dump()))
        return EXIT_OK

    return asyncio.run(go())


def _refuse_inprocess(settings: Settings) -> bool:
    if settings.events.backend != "inprocess":
        return False
    print(
        "voiceagent: error: events.backend is inprocess: only a server node's own bus could carry "
        "this; use the node (POST /api/outreach, outreach.scheduler.enabled), or the rocketmq backend",
        file=sys.stderr,
    )
    return True


def _cmd_outreach_run(settings: Settings, _: argparse.Namespace) -> int:
    if _refuse_inprocess(settings):
        return EXIT_FAILURE
    stop = asyncio.Event()

    async def go() -> None:
        from voiceagent.engines.embeddings.e5 import E5Embeddings
        from voiceagent.events import EventBus
        from voiceagent.outreach.intent_store import IntentStore, user_turns_after
        from voiceagent.outreach.ledger import OutreachLedger
        from voiceagent.outreach.process import analyzers_for, run_outreach_process
        from voiceagent.outreach.publisher import OutreachPublisher
        from voiceagent.outreach.registry import SessionRegistry

        embeddings = None
        async with _worker_services(settings, stop) as (database, transport):
            try:
                if "embedding" in settings.outreach.analysis.backends:
                    embeddings = await asyncio.to_thread(E5Embeddings, settings.engines.embeddings)
                publisher = OutreachPublisher(
                    EventBus(transport, settings.events),
                    OutreachLedger(database),
                    SessionRegistry(database, settings.outreach.stale_after_s),
                    f"scheduler@{settings.node_id}",
                )
                log.info("outreach scheduler running (node %s); Ctrl-C stops it", settings.node_id)
                await run_outreach_process(
                    settings,
                    stop,
                    database=database,
                    publisher=publisher,
                    analyzers=analyzers_for(settings, embeddings),
                    intent_store=IntentStore(database),
                    read_turns=user_turns_after,
                )
            finally:
                if embeddings is not None:
                    embeddings.close()

    try:
        asyncio.run(go())
    except ValueError as exc:  # a bad intents file or cron expression, worded for the operator
        print(f"voiceagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("outreach scheduler stopped")
    return EXIT_OK


@contextlib.asynccontextmanager
async def _worker_services(
    settings: Settings, stop: asyncio.Event
) -> AsyncIterator[tuple[Database, MessageBus]]:
    """The store (migrated) and the broker a worker process (no calls) runs on; SIGTERM and
    Ctrl-C set ``stop``."""
    from voiceagent.events.factory import create_transport

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    database = Database(settings.store)
    transport = create_transport(settings.events)
    try:
        await database.ping()
        if settings.store.migrate_on_start:
            await database.migrate()
        await transport.start()
        yield database, transport
    finally:
        await transport.close()
        await database.close()


def _cmd_ingest(settings: Settings, _: argparse.Namespace) -> int:
    if _refuse_inprocess(settings):
        return EXIT_FAILURE
    stop = asyncio.Event()

    async def go() -> None:
        from voiceagent.engines.embeddings.e5 import E5Embeddings
        from voiceagent.events import EventBus
        from voiceagent.knowledge.node import KnowledgeNode

        async with _worker_services(settings, stop) as (database, transport):
            node = KnowledgeNode(
                settings.knowledge, bus=EventBus(transport, settings.events), database=database
            )
            embeddings = await asyncio.to_thread(E5Embeddings, settings.engines.embeddings)
            try:
                await node.start()
                node.start_index(embeddings)
                log.info("knowledge ingestion running (node %s); Ctrl-C stops it", settings.node_id)
                await stop.wait()
            finally:
                await node.stop()
                embeddings.close()

    asyncio.run(go())
    log.info("knowledge ingestion stopped")
    return EXIT_OK


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Jobs from the RocketMQ jobs topic (events.backend rocketmq), or from the store's queue
    beside an embedded node (inprocess: the node and its workers share the SQLite file)."""
    from voiceagent.jobs.priority import apply_priority
    from voiceagent.jobs.queue import queue_kind
    from voiceagent.jobs.registry import KindRegistry
    from voiceagent.jobs.worker import NoKindLoaded, UnknownKinds, create_worker, kind_classes

    worker = settings.jobs.worker
    if args.kinds is not None:
        worker = worker.model_copy(update={"kinds": [k.strip() for k in args.kinds.split(",") if k.strip()]})
    if args.concurrency is not None:
        if args.concurrency < 1:
            print("voiceagent: error: --concurrency must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        worker = worker.model_copy(update={"concurrency": args.concurrency})
    settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"worker": worker})})
    try:
        if not worker.kinds:
            raise UnknownKinds("no job kinds to run: name some with --kinds or jobs.worker.kinds")
        kind_classes(KindRegistry(settings.jobs.extra_kinds), worker.kinds)
        queue_kind(settings.jobs, settings.events.backend)
    except (ImportError, ValueError) as exc:  # an unknown kind, a bad extra_kinds entry, queue vs backend
        print(f"voiceagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    priority = apply_priority(worker)  # first: threads started from here on inherit it
    stop = asyncio.Event()

    async def go() -> None:
        from voiceagent.events import EventBus

        async with _worker_services(settings, stop) as (database, transport):
            bus = EventBus(transport, settings.events)
            await create_worker(settings, database, bus, priority=priority).run(stop)

    try:
        asyncio.run(go())
    except NoKindLoaded as exc:
        print(f"voiceagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("worker stopped")
    return EXIT_OK


def _cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from voiceagent.events.rocketmq.broker import BrokerError, LocalBroker

    topics = {t.name: t.message_type for t in settings.events.topics.values()}
    broker = LocalBroker(
        settings.events.rocketmq, topics, say=lambda line: print(f"broker: {line}", flush=True)
    )
    try:
        if args.action == "fetch":
            print(f"broker: jars in {broker.fetch()}")
        elif args.action == "start":
            broker.start(fresh=args.fresh)
        elif args.action == "stop":
            broker.stop()
        else:
            state = broker.status()
            print(
                f"namesrv: {state.namesrv_pid or 'down'}, broker: {state.broker_pid or 'down'}, "
                f"gRPC 127.0.0.1:{broker.grpc_port}: {'listening' if state.grpc_listening else 'closed'}"
            )
            return EXIT_OK if state.running else 3
    except BrokerError as exc:
        print(f"voiceagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_serve(settings: Settings, _: argparse.Namespace) -> int:
    stop_requested = asyncio.Event()

    # uvicorn swaps its own handlers in while serving and re-raises the signal afterwards; this
    # handler receives that re-raise (and any signal before serving starts) so we exit cleanly.
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    listener = _bind(settings.server.host, settings.server.port)
    try:
        asyncio.run(_serve(settings, listener, stop_requested))
    finally:
        listener.close()
    log.info("shutdown complete")
    return EXIT_OK


def _bind(host: str, port: int) -> socket.socket:
    """Claim the port before anything starts, so a clash fails fast and leaves nothing running."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it a keep-alive response sent in two writes waits
    # ~40 ms on the peer's delayed ACK (uvloop does not set it on sockets handed to it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def _serve(settings: Settings, listener: socket.socket, stop_requested: asyncio.Event) -> None:
    import uvicorn

    from voiceagent.server.app import create_app, server_config

    runtime = Runtime(settings)
    await runtime.start()
    if stop_requested.is_set():
        await runtime.stop()
        return
    server = uvicorn.Server(server_config(create_app(runtime), settings.server))
    listener.listen(2048)  # connections queue from here on, so the log line below is true
    host, port = listener.getsockname()[:2]
    log.info(
        "VoiceAgent %s listening on http://%s:%d (node %s)",
        __version__,
        host,
        port,
        settings.node_id,
    )
    await server.serve(sockets=[listener])


if __name__ == "__main__":
    sys.exit(main())
