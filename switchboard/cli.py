"""The ``switchboard`` command line. Every command accepts ``--config FILE`` and ``--help``.

A user mistake (bad config, port in use, broker unreachable) is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

__all__ = ["app", "main"]

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="switchboard",
    help="Omnichannel message ingestion for customer service: channels -> Kafka -> router -> department queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Topic administration.", no_args_is_help=True)
connector_app = typer.Typer(help="Run one configured channel instance.", no_args_is_help=True)
router_app = typer.Typer(help="Run the router.", no_args_is_help=True)
channels_app = typer.Typer(help="Admin view of the configured channels.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Raw inputs that could not become records.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(connector_app, name="connector")
app.add_typer(router_app, name="router")
app.add_typer(channels_app, name="channels")
app.add_typer(quarantine_app, name="quarantine")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Configuration file (else $SWITCHBOARD_CONFIG, else ./switchboard.yaml)."
    ),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"switchboard: {message}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can cause into one line on stderr."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from models.config import ConfigError
        from models.errors import InvalidInput, SwitchboardError

        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            fail("invalid configuration: " + "; ".join(error.lines))
        except InvalidInput as error:  # a bad file, a port in use, no embedded broker
            fail(str(error))
        except SwitchboardError as error:
            fail(str(error) or type(error).__name__, code=1)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except ModuleNotFoundError as error:
            if not (error.name or "").startswith(("router", "connectors")):
                raise
            fail(f"not available in this build: {error.name} is not installed yet", code=3)
        except Exception as error:
            # aiokafka costs a tenth of a second to import; a command that never imported it
            # cannot have raised one of its errors, so look it up only when it is loaded.
            kafka_errors = sys.modules.get("aiokafka.errors")
            if kafka_errors is None or not isinstance(error, kafka_errors.KafkaError):
                raise
            if isinstance(error, kafka_errors.KafkaConnectionError):
                fail(f"cannot reach the Kafka broker: {error}", code=1)
            fail(str(error) or type(error).__name__, code=1)

    return wrapper


def _load(config: Path | None, *, demo_fallback: bool = False) -> Any:
    return _load_with_path(config, demo_fallback=demo_fallback)[0]


def _load_with_path(config: Path | None, *, demo_fallback: bool = False) -> tuple[Any, Path | None]:
    """The settings and the file they came from (None: built-in defaults or the demo config)."""
    from connectors.registry import Registry
    from switchboard.settings import load_settings

    return load_settings(config, Registry.default(), demo_fallback=demo_fallback)


def _logger(level: str) -> Any:
    import structlog

    from switchboard.logs import configure_logging

    configure_logging(level)
    return structlog.get_logger("switchboard")


# --------------------------------------------------------------------------- running


@app.command()
@user_errors
def up(config: ConfigOption = None, log_level: LogLevel = "info") -> None:
    """Run every configured channel plus the router in one process.

    With no config file: a demo config (SMTP on 127.0.0.1:2525 for example.com, webchat, HTTP on
    127.0.0.1:8080). With no kafka.bootstrap: the embedded development broker.
    """
    from switchboard.processes import run_up

    settings, path = _load_with_path(config, demo_fallback=True)
    asyncio.run(run_up(settings, _logger(log_level), config_path=path))


@connector_app.command("run")
@user_errors
def connector_run(
    name: Annotated[str, typer.Argument(help="The channel instance name from the config.")],
    config: ConfigOption = None,
    log_level: LogLevel = "info",
) -> None:
    """Run one configured channel instance (one per process or pod)."""
    from switchboard.processes import run_connector

    settings = _load(config)
    asyncio.run(run_connector(settings, settings.channel(name), _logger(log_level)))


@router_app.command("run")
@user_errors
def router_run(config: ConfigOption = None, log_level: LogLevel = "info") -> None:
    """Run the router; more processes share one consumer group."""
    from switchboard.processes import run_router

    settings, path = _load_with_path(config)
    asyncio.run(run_router(settings, _logger(log_level), config_path=path))


@app.command()
@user_errors
def demo(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the routed records.")] = 30.0,
) -> None:
    """Push a handful of multilingual sample messages through a running `switchboard up`."""
    from switchboard.demo import run_demo

    settings = _load(config, demo_fallback=True)
    if asyncio.run(run_demo(settings, timeout=timeout, out=sys.stdout)) is False:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- topics and queues


@topics_app.command("init")
@user_errors
def topics_init(config: ConfigOption = None) -> None:
    """Create every topic (idempotent: existing topics are left as they are)."""
    from bus.admin import ensure_topics
    from models.topics import Topics

    settings = _load(config)
    if not settings.kafka.bootstrap:
        fail("topics init needs kafka.bootstrap (or SWITCHBOARD_KAFKA_BOOTSTRAP)")
    specs = Topics(settings.kafka.topic_prefix).all(settings.router.departments)
    created = asyncio.run(ensure_topics(settings.kafka, specs))
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} created, {len(specs) - len(created)} already present")


@app.command()
@user_errors
def tail(
    queue: Annotated[
        str,
        typer.Argument(help="A department (billing, …) or triage, escalations, dlq, inbound, quarantine."),
    ],
    config: ConfigOption = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Each record's value as one compact line.")] = False,
) -> None:
    """Follow a queue without a consumer group: never commits, never takes partitions from workers."""
    from router.queue import tail as follow

    settings = _load(config)
    known = {*settings.router.departments, "triage", "escalations", "dlq", "inbound", "quarantine"}
    if queue not in known:
        fail(f"unknown queue {queue!r} (known: {', '.join(sorted(known))})")
    if not settings.kafka.bootstrap:
        fail("tail needs kafka.bootstrap (or SWITCHBOARD_KAFKA_BOOTSTRAP)")
    asyncio.run(follow(settings, queue, from_beginning=from_beginning, as_json=as_json, out=sys.stdout))


# --------------------------------------------------------------------------- classification


@app.command()
@user_errors
def classify(
    text: Annotated[str, typer.Argument(help="The message text.")],
    subject: Annotated[str, typer.Option("--subject", "-s", help="The subject line, if any.")] = "",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the routing object as JSON.")] = False,
) -> None:
    """Print the routing decision for one message."""
    from router.training import classify as decide

    settings = _load(config)
    routing = decide(text, subject, settings)
    if as_json:
        typer.echo(routing.model_dump_json())
        return
    typer.echo(
        f"department={routing.department} confidence={routing.confidence:.2f} language={routing.language} "
        f"priority={routing.priority} escalate={str(routing.escalate).lower()}"
    )
    typer.echo("reasons: " + ", ".join(routing.reasons))


@app.command()
@user_errors
def train(
    data: Annotated[Path, typer.Argument(help="Labelled examples, JSON Lines.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the model.")],
    config: ConfigOption = None,
) -> None:
    """Train the department model (never overwrites the packaged default)."""
    from router.training import train as fit

    settings = _load(config)
    summary = fit(data, output, settings)
    typer.echo(summary)


@app.command("eval")
@user_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled examples, JSON Lines.")],
    model: Annotated[
        Path | None, typer.Option("--model", help="Model file (default: the packaged one).")
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One compact JSON line.")] = False,
) -> None:
    """Evaluate a model on labelled examples."""
    from router.training import evaluate as score
    from router.training import format_report

    settings = _load(config)
    report = score(data, model, settings)
    typer.echo(format_report(report, as_json=as_json))


# --------------------------------------------------------------------------- admin


@channels_app.command("list")
@user_errors
def channels_list(config: ConfigOption = None) -> None:
    """The configured channel instances and the channel types available."""
    from connectors.registry import Registry

    registry = Registry.default()
    settings = _load(config)
    if not settings.channels:
        typer.echo("no channels configured")
    for channel in settings.channels:
        where = str(channel.listen) if channel.listen else ""
        channel_type = registry.get(channel.type)
        if channel_type.http and not channel.listen:
            where = f"http://{settings.http.listen}/channels/{channel.name}"
        typer.echo(f"{channel.name:24} {channel.type:10} {where}")
    typer.echo("types: " + ", ".join(registry.types))


@channels_app.command("check")
@user_errors
def channels_check(
    name: Annotated[str, typer.Argument(help="Channel instance name.")], config: ConfigOption = None
) -> None:
    """Test a channel's credentials and connectivity (may use the network)."""
    from connectors.registry import Registry

    settings = _load(config)
    channel = settings.channel(name)
    channel_type = Registry.default().get(channel.type)
    if channel_type.check is None:
        typer.echo(f"{name}: configuration valid; the {channel.type} type has no live check")
        return
    try:
        summary = asyncio.run(channel_type.check(channel))
    except Exception as error:
        fail(f"{name}: check failed: {error}", code=1)
    typer.echo(f"{name}: ok: {summary}")


@quarantine_app.command("list")
@user_errors
def quarantine_list(config: ConfigOption = None) -> None:
    """List quarantined inputs with their ids and reasons."""
    from switchboard.quarantine import list_quarantine

    settings = _load(config)
    asyncio.run(list_quarantine(settings, out=sys.stdout))


@quarantine_app.command("reprocess")
@user_errors
def quarantine_reprocess(
    item: Annotated[str | None, typer.Argument(help="One id (partition:offset); default: all.")] = None,
    config: ConfigOption = None,
) -> None:
    """Turn quarantined inputs back into records where the channel can now parse them."""
    from connectors.registry import Registry
    from switchboard.quarantine import reprocess_quarantine

    settings = _load(config)
    asyncio.run(reprocess_quarantine(settings, Registry.default(), item, out=sys.stdout))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
