"""`memserve`: run the service, its parts, training and benchmarks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing as mp
import re
import signal
import sys
import threading
import types
import typing
from collections.abc import Collection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError as SourceError

from app.config import ApiKey, Settings, SettingsError
from app.logs import setup_logging

log = logging.getLogger("memserve")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def _run_api(settings: Settings) -> None:
    import uvicorn

    from app.api.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        access_log=False, loop="auto", http="auto", log_config=None,  # our handler, our format
    )  # fmt: skip
    uvicorn.Server(config).run()


class WorkerPool:
    """Worker processes (spawn start method), restarted if one dies while serving."""

    def __init__(self, settings: Settings, count: int) -> None:
        gpus = _gpu_count()
        self.settings_of = []
        for i in range(count):
            device = settings.device
            if device == "auto" and gpus:
                device = f"cuda:{i % gpus}"  # one worker per GPU
            self.settings_of.append(settings.model_copy(update={"device": device}))
        self.ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = threading.Event()

    def _start(self, i: int) -> BaseProcess:
        from app.worker.main import run_worker

        p = self.ctx.Process(target=run_worker, args=(self.settings_of[i],), name=f"worker-{i}")
        p.start()
        return p

    def start(self) -> None:
        self.procs = [self._start(i) for i in range(len(self.settings_of))]
        threading.Thread(target=self._watch, daemon=True, name="worker-watch").start()

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                if not p.is_alive() and not self.stopping.is_set():
                    log.warning("worker %d exited (code %s); starting a new one", i, p.exitcode)
                    self.procs[i] = self._start(i)

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        for p in self.procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: finish the batch in hand, ack, exit
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded Redis (unless configured), workers, API; Ctrl-C stops all of them."""
    from app.worker.main import worker_cores

    worker_cores(settings.worker_cpus)  # a wrong core fails here, not in every restarted worker
    embedded = None
    if not settings.redis_url:
        from app.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(settings.redis_data_dir)
        settings = settings.model_copy(update={"redis_url": embedded.url})
    settings = _local_auth(settings)
    settings.all_api_keys()  # fail before starting anything
    settings.check_checkpoints()
    count = settings.workers if settings.workers is not None else max(_gpu_count(), 1)
    pool = WorkerPool(settings, count)
    pool.start()
    print(f"memserve: http://{settings.host}:{settings.port} (docs at /docs), {count} worker(s), "
          f"Redis {settings.redis_url}", file=sys.stderr)  # fmt: skip
    if settings.auth == "off":
        print("memserve: authentication is OFF (local use): no API keys, every request acts for one "
              "tenant, no limits; set MEMSERVE_API_KEYS to require keys", file=sys.stderr)  # fmt: skip
    # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal into the handler that
    # was there before it: this one lets the cleanup below run instead of dying on SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: None)
    try:
        _run_api(settings)
    finally:
        pool.stop()
        if embedded is not None:
            embedded.stop()
    return 0


def _local_auth(settings: Settings) -> Settings:
    """`serve` is for local use: without keys configured and no MEMSERVE_AUTH given, auth is off."""
    no_keys = not settings.api_keys and settings.api_keys_file is None
    if no_keys and "auth" not in settings.model_fields_set:
        return settings.model_copy(update={"auth": "off"})
    return settings


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Make an API key: the key for the client, the entry for MEMSERVE_API_KEYS."""
    from app.api.auth import key_digest, new_api_key

    key = new_api_key()
    entry: dict[str, object] = {"tenant": args.tenant, "sha256": key_digest(key)}
    for name in ("max_sessions", "rate_per_s", "burst"):
        if getattr(args, name) is not None:
            entry[name] = getattr(args, name)
    ApiKey.model_validate(entry)  # the tenant name must be valid
    print(
        f"API key for {args.tenant} (give it to the client; memserve keeps only its hash):", file=sys.stderr
    )
    print(key)
    print(
        "add this entry to the JSON list in MEMSERVE_API_KEYS (or MEMSERVE_API_KEYS_FILE):", file=sys.stderr
    )
    print(json.dumps(entry))
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_redis_url()
    _run_api(settings)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.worker.main import run_worker

    settings.require_redis_url()
    settings.check_checkpoints()
    run_worker(settings)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in [
        ("serve", "run everything: embedded Redis (unless MEMSERVE_REDIS_URL), workers, API"),
        ("api", "run one API process (needs MEMSERVE_REDIS_URL)"),
        ("worker", "run one worker process (needs MEMSERVE_REDIS_URL)"),
    ]:
        s = sub.add_parser(name, help=helptext)
        if name != "worker":
            s.add_argument("--host", help="listen address (MEMSERVE_HOST)")
            s.add_argument("--port", type=int, help="listen port (MEMSERVE_PORT)")
        if name != "api":
            s.add_argument("--device", help="auto, cpu, cuda or cuda:N (MEMSERVE_DEVICE)")
            s.add_argument(
                "--backend", choices=["torch", "onnx"], help="inference backend (MEMSERVE_BACKEND)"
            )
        if name == "serve":
            s.add_argument("--workers", type=int, help="worker processes (MEMSERVE_WORKERS)")
    keys = sub.add_parser("keys", help="make an API key: memserve keys new TENANT")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    new = keys_sub.add_parser("new", help="a new random key and its MEMSERVE_API_KEYS entry")
    new.add_argument("tenant", help="who the key acts for (letters, digits, . _ -)")
    new.add_argument("--max-sessions", type=int, help="live sessions (default MEMSERVE_MAX_SESSIONS_PER_KEY)")
    new.add_argument(
        "--rate-per-s", type=float, help="requests per second (default MEMSERVE_RATE_LIMIT_PER_S)"
    )
    new.add_argument("--burst", type=int, help="requests at once above the rate (MEMSERVE_RATE_LIMIT_BURST)")
    sub.add_parser("train", help="train a checkpoint: memserve train {memnet,vma,vae} ...", add_help=False)
    sub.add_parser(
        "evaluate", help="score a checkpoint: memserve evaluate {memnet,vma} --checkpoint X", add_help=False
    )
    sub.add_parser("bench", help="benchmarks: memserve bench {stream,vma,backends} ...", add_help=False)
    sub.add_parser("chaos", help="kill workers and crash Redis under load; check each step", add_help=False)
    sub.add_parser(
        "export", help="export checkpoints to ONNX: memserve export --model NAME | --all", add_help=False
    )
    sub.add_parser(
        "stream", help="stream a CSV series through a MemNet session: memserve stream F.csv", add_help=False
    )
    sub.add_parser("fuzz", help="schemathesis against a running service: memserve fuzz", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `memserve` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if missing := _missing_extra(argv):
        print(missing, file=sys.stderr)
        return 2
    if argv and argv[0] == "train":
        from models.train import main as train_main

        return int(train_main(argv[1:]) or 0)
    if argv and argv[0] == "evaluate":
        from models.evaluate import main as evaluate_main

        return int(evaluate_main(argv[1:]) or 0)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    if argv and argv[0] == "chaos":
        from app.bench.chaos import main as chaos_main

        return chaos_main(argv[1:])
    if argv and argv[0] == "fuzz":
        from app.bench.fuzz import main as fuzz_main

        return fuzz_main(argv[1:])
    if argv and argv[0] == "stream":
        from app.stream_cli import main as stream_main

        return stream_main(argv[1:])
    if argv and argv[0] == "export":
        from models.export import main as export_main

        return export_main(argv[1:])
    args = _parser().parse_args(argv)
    overrides = {
        k: v
        for k in ("host", "port", "device", "backend", "workers")
        if (v := getattr(args, k, None)) is not None
    }
    try:
        settings = Settings(**overrides)
    except (ValidationError, SourceError) as e:
        print(f"memserve: {settings_problem(e, set(overrides))}", file=sys.stderr)
        return 2
    try:
        setup_logging(settings.log_level, settings.log_format)
        commands = {"serve": cmd_serve, "api": cmd_api, "worker": cmd_worker, "keys": cmd_keys}
        return commands[args.cmd](args, settings)
    except SettingsError as e:
        text = str(e)
        if isinstance(e.__cause__, ValidationError):  # e.g. an entry of MEMSERVE_API_KEYS_FILE
            text = text.replace(str(e.__cause__), _one_line(e.__cause__))
        print(f"memserve: {text}", file=sys.stderr)
        return 2
    except ValidationError as e:  # e.g. the tenant name of `memserve keys new`
        print(f"memserve: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# Settings whose value is not repeated in an error: a Redis URL may hold a password, and a
# list of keys is long (and what went wrong is in the error).
_NOT_ECHOED = {"redis_url", "api_keys"}


def settings_problem(e: ValidationError | SourceError, flags: Collection[str] = ()) -> str:
    """One line for a setting Settings() refused: which setting, the form it takes, what was wrong.

    ``flags`` are the fields given as command-line options, named as such. pydantic's own
    message spans lines per error and ends in a link, which reads as a crash at startup.
    """
    if isinstance(e, SourceError):  # pydantic-settings could not parse a complex value (JSON)
        m = re.search(r'field "(\w+)" from source "(\w+)"', str(e))
        if m is None:
            return str(e)
        name, source = m.groups()
        where = " (in .env)" if source.startswith("DotEnv") else ""
        cause = f"not valid JSON: {e.__cause__}" if isinstance(e.__cause__, ValueError) else str(e)
        return f"MEMSERVE_{name.upper()}{where}: expected {_expected_form(name)}: {cause}"
    problems: dict[str, list[str]] = {}
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name not in Settings.model_fields:
            problems.setdefault("", []).append(_error_text(err))
            continue
        text = _error_text(err, skip=1)
        if name not in _NOT_ECHOED and len(err["loc"]) == 1:
            text = f"got {_short(err.get('input'))}: {text}"
        problems.setdefault(name, []).append(text)
    parts = []
    for name, texts in problems.items():
        if not name:
            parts.append("; ".join(texts))
            continue
        label = f"--{name.replace('_', '-')}" if name in flags else f"MEMSERVE_{name.upper()}"
        sep = "; " if texts[0].startswith("got ") else ": "
        parts.append(f"{label}: expected {_expected_form(name)}{sep}{'; '.join(texts)}")
    return " | ".join(parts)


def _one_line(e: ValidationError) -> str:
    return "; ".join(_error_text(err) for err in e.errors())


def _error_text(err: Any, skip: int = 0) -> str:
    """``item 0, sha256: field required`` from one of pydantic's errors."""
    loc = ", ".join(f"item {p}" if isinstance(p, int) else str(p) for p in err["loc"][skip:])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if msg[1:2].islower():  # "Input should be ..." reads on after a colon; "MEMSERVE_X ..." stays
        msg = msg[:1].lower() + msg[1:]
    return f"{loc}: {msg}" if loc else msg


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expected_form(name: str) -> str:
    """What a setting's value looks like, from its type and bounds."""
    field = Settings.model_fields[name]
    if (field.description or "").startswith("JSON "):  # it spells out what the type cannot
        return f"a {field.description}"
    tp = field.annotation
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:  # X | None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    bounds = "".join(
        f" {op} {v}"
        for m in field.metadata
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if (v := getattr(m, attr, None)) is not None
    )
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + bounds
    if tp is float:
        return "a number" + bounds
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    return "a path" if tp is Path else "a string"


def _missing_extra(argv: list[str]) -> str | None:
    """What a command needs that `make serve`'s install leaves out, said before it starts:
    `train` exports its graphs only after hours of training, `evaluate --plot` plots last."""
    cmd = argv[0] if argv else ""
    needs: dict[str, tuple[str, tuple[str, ...]]] = {
        "train": ("train", ("onnx", "onnxscript")), "export": ("export", ("onnx", "onnxscript")),
    }  # fmt: skip
    if cmd == "evaluate" and "--plot" in argv:
        needs[cmd] = ("plot", ("matplotlib",))
    if cmd not in needs or "-h" in argv or "--help" in argv:
        return None
    extra, modules = needs[cmd]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"memserve {cmd} needs {', '.join(missing)}: pip install -e '.[{extra}]' (make test installs it)"


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] not in ("stream", "vma", "backends"):
        print("usage: memserve bench {stream,vma,backends} [options]  (see --help)", file=sys.stderr)
        return 2
    if argv[0] == "backends":
        from app.bench.backends import main as backends_main

        return backends_main(argv[1:])
    if argv[0] == "vma":
        from app.bench.vma import main as run
    else:
        from app.bench.stream import main as run
    if any(a == "--backend" or a.startswith("--backend=") for a in argv[1:]):
        from app.bench.served import compare

        return compare(argv[0], argv[1:], run)
    return int(run(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
