"""The `voice` command: serve, call, bench, latency, dial, settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from voice.errors import ConfigError, VoiceError
from voice.settings import Settings

log = logging.getLogger("voice")


def _configure_logging(level: str, fmt: str = "text") -> None:
    from voice.logs import configure

    configure(level, fmt)


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.server import serve_forever

    settings = Settings.load(args, os.environ)
    _configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve_forever(settings))
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    from websockets.exceptions import InvalidStatus

    from clients.call import call

    _configure_logging("WARNING")
    try:
        result = asyncio.run(call(args.url, Path(args.file), Path(args.out) if args.out else None,
                                  sample_rate=args.sample_rate, pipeline=args.pipeline,
                                  transport=args.transport,
                                  token=args.token or os.environ.get("VOICE_TOKEN")))
    except ValueError as exc:  # an unknown transport
        raise ConfigError(str(exc)) from exc
    except InvalidStatus as exc:  # refused at the handshake: say why, not a traceback
        response = exc.response
        reason = response.body.decode(errors="replace").strip() if response.body else ""
        hint = " (pass --token or set VOICE_TOKEN)" if response.status_code == 401 else ""
        raise VoiceError(f"the service refused the call: HTTP {response.status_code} "
                         f"{reason}{hint}") from exc
    return 0 if result.transcripts and not result.errors else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from latency_tests.bench import run_bench

    _configure_logging("WARNING")
    return asyncio.run(run_bench(args))


def _cmd_latency(args: argparse.Namespace) -> int:
    from latency_tests.suite.cli import run_command

    _configure_logging("WARNING")
    return run_command(args)


def _cmd_dial(args: argparse.Namespace) -> int:
    from service.dial import dial

    settings = Settings.load(args, os.environ)
    _configure_logging(settings.log_level)
    return asyncio.run(dial(settings, args.target, args.greeting, args.answer_timeout))


def _cmd_settings(args: argparse.Namespace) -> int:
    print(Settings.markdown_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice", description="Real-time voice assistant service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the service")
    Settings.add_arguments(serve)
    serve.set_defaults(run=_cmd_serve)

    call = sub.add_parser("call", help="stream an audio file to the service as a caller")
    call.add_argument("file", help="audio file (wav, flac, ogg, mp3, ...; any rate)")
    call.add_argument("--url", default="http://127.0.0.1:8000", help="service URL")
    call.add_argument("--transport", default="ws",
                      help="ws (default), webrtc (the URL stays http://...), or sip")
    call.add_argument("--sample-rate", type=int, default=16000, help="session sample rate")
    call.add_argument("--pipeline", default=None, help="cascade (default) or another pipeline")
    call.add_argument("--out", default="reply.wav", help="where to save the reply audio")
    call.add_argument("--token", default=None,
                      help="API key or client secret, if the service needs one [env VOICE_TOKEN]")
    call.set_defaults(run=_cmd_call)

    bench = sub.add_parser("bench", help="measure voice-to-voice latency against a service")
    from latency_tests.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(run=_cmd_bench)

    latency = sub.add_parser("latency", help="the latency regression suite (docs/latency.md)")
    from latency_tests.suite.cli import add_latency_commands

    add_latency_commands(latency)
    latency.set_defaults(run=_cmd_latency)

    dial = sub.add_parser("dial", help="place a SIP call that the assistant speaks on")
    dial.add_argument("target", help="sip:USER@HOST[:PORT]")
    dial.add_argument("--greeting", default="", help="what the assistant says on answer")
    dial.add_argument("--answer-timeout", type=float, default=60.0,
                      help="seconds to wait for an answer before cancelling")
    Settings.add_arguments(dial)
    dial.set_defaults(run=_cmd_dial)

    table = sub.add_parser("settings", help="print every setting as a Markdown table")
    table.set_defaults(run=_cmd_settings)

    local = sub.add_parser("llm-server", add_help=False,
                           help="serve the bundled (or another GGUF) LLM's Chat Completions "
                                "API on its own (voice llm-server --help)")
    local.set_defaults(run=None)  # main() hands it its arguments
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["llm-server"]:  # its own flags, all of them (argparse's REMAINDER
        from apis.openai_chat import main as serve_chat  # would take no leading option)

        serve_chat(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"voice: configuration error: {exc}", file=sys.stderr)
        return 2
    except VoiceError as exc:
        print(f"voice: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
