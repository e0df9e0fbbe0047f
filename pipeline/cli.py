"""`patchrank` command line. Each subcommand lives in pipeline/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = [
    "demo",
    "phantom",
    "train",
    "score",
    "evaluate",
    "export",
    "bench",
    "enqueue",
    "screen",
    "query",
    "serve",
    "report",
    "compact",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchrank",
        description="Unsupervised patch-level anomaly detection for medical scans "
        "(Patch-GAN with targeted patch ranking).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"patchrank.pipeline.commands.{name}").register(sub)
    return parser


def _secrets(args: argparse.Namespace) -> list[str]:
    """Strings that must not appear in anything printed on failure (Redis URL passwords)."""
    from patchrank.pipeline.service.settings import password_from_environment, read_password_file, url_secrets

    out = url_secrets(getattr(args, "redis_url", None))
    for get in (
        lambda: read_password_file(args.redis_password_file) if getattr(args, "redis_password_file", None) else None,
        password_from_environment,
    ):
        try:
            pw = get()
        except ValueError:
            pw = None
        if pw:
            out.append(pw)
    return out


def _validation_line(e: dict, model: str) -> str:
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    where = ".".join(map(str, e.get("loc", ()))) or "settings"
    if e.get("type") == "extra_forbidden":
        msg = "unknown setting"
        if model == "TrainConfig":  # the same name one level deeper, e.g. image_size -> preprocess.image_size
            from patchrank.pipeline.settings import setting_names

            last = where.rsplit(".", 1)[-1]
            near = [n for n in setting_names() if n.rsplit(".", 1)[-1] == last and n != where]
            msg += f" (did you mean {' or '.join(near)}?)" if near else ""
    return msg if msg.startswith(where) else f"{where}: {msg}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # nibabel reports each header field it repairs on its own handler and ours (2 lines per read); -v shows them
    logging.getLogger("nibabel.global").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    from pydantic import ValidationError

    from patchrank.model.checkpoint import CheckpointError
    from patchrank.pipeline.data.datasets import DatasetError
    from patchrank.pipeline.data.loaders import ScanError
    from patchrank.pipeline.errors import one_line
    from patchrank.pipeline.service.settings import scrub

    def fail(text: str) -> None:
        print(scrub(f"patchrank {args.command}: error: {text}", _secrets(args)), file=sys.stderr)

    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
        return rc
    except BrokenPipeError:  # the reader went away (`patchrank query ... | head`): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a file descriptor (captured)
            pass
        return 141
    except ValidationError as exc:  # settings built from the flags; inputs are never echoed
        fail("; ".join(_validation_line(e, exc.title) for e in exc.errors()[:3]))
        return 2
    except (DatasetError, ScanError, CheckpointError, FileNotFoundError, ValueError, ConnectionError) as exc:
        fail(" ".join(str(exc).split()) if str(exc) else one_line(exc))
        return 2
    except KeyboardInterrupt:
        print(f"patchrank {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - services (Redis, Ray, Serve): one line, the traceback only with -v
        if args.verbose:
            import traceback

            print(scrub(traceback.format_exc(), _secrets(args)), file=sys.stderr)
        fail(f"{one_line(exc)}" + ("" if args.verbose else " (run with -v for the traceback)"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
