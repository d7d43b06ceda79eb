"""The files in deploy/ run only commands and options that exist: every `pylcogt ...` command line
in docker-compose.yml, the Dockerfile, the Kubernetes manifests, the systemd units and the shell
blocks of deploy/README.md is parsed by the real parser (:func:`pylcogt.cli.build_parser`)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pylcogt.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
SYSTEMD = sorted((DEPLOY / "systemd").glob("*.service"))
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop")

Command = tuple[str, list[str]]  # (where, argv after "pylcogt")


def _pylcogt_argv(words: list[str]) -> list[str] | None:
    """The arguments after the `pylcogt` word (a bare name or a path ending in /pylcogt)."""
    for i, word in enumerate(words):
        if Path(word).name == "pylcogt":
            return words[i + 1 :]
    return None


def _as_words(value) -> list[str]:
    return [str(w) for w in value] if isinstance(value, list) else shlex.split(str(value))


def _compose_commands() -> Iterator[Command]:
    doc = yaml.safe_load(COMPOSE.read_text())
    for name, service in doc["services"].items():
        words = _as_words(service.get("entrypoint") or []) + _as_words(service.get("command") or [])
        argv = _pylcogt_argv(words)
        if argv is not None:
            yield f"docker-compose.yml service {name}: {' '.join(words)}", argv


def _pod_specs(doc: dict) -> Iterator[dict]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    if "template" in spec:
        yield spec["template"]["spec"]
    elif doc.get("kind") == "Pod":
        yield spec


def _k8s_commands() -> Iterator[Command]:
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            for pod in _pod_specs(doc):
                for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                    words = _as_words(c.get("command") or []) + _as_words(c.get("args") or [])
                    argv = _pylcogt_argv(words)
                    if argv is not None:
                        where = f"k8s/{path.name} {doc['kind']} container {c['name']}"
                        yield f"{where}: {' '.join(words)}", argv


def _systemd_commands() -> Iterator[Command]:
    for path in SYSTEMD:
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in EXEC_KEYS:
                words = shlex.split(value.strip().lstrip("-@:+!"))
                argv = _pylcogt_argv(words)
                if argv is not None:
                    yield f"systemd/{path.name}: {line.strip()}", argv


def _dockerfile_commands() -> Iterator[Command]:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        match = re.match(r"\s*(CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line)
        if match:
            words = json.loads(match.group(2))
            argv = _pylcogt_argv(words)
            if argv is not None:
                yield f"Dockerfile: {line.strip()}", argv


def _readme_argv(words: list[str]) -> list[str] | None:
    """The pylcogt arguments of a README shell line: `pylcogt ...`, after `sudo -u USER`, `env`
    and VAR=value words, or in `docker compose run [--rm] SERVICE pylcogt ...`."""
    if words[:3] == ["docker", "compose", "run"]:
        return words[words.index("pylcogt") + 1 :] if "pylcogt" in words else None
    i = 0
    while i < len(words):
        if words[i] == "sudo" and words[i + 1 : i + 2] == ["-u"]:
            i += 3
        elif words[i] == "env" or "=" in words[i]:
            i += 1
        else:
            break
    if i < len(words) and (words[i] == "pylcogt" or words[i].endswith("/bin/pylcogt")):
        return words[i + 1 :]
    return None


def _readme_commands() -> Iterator[Command]:
    """pylcogt command lines in the README's ```sh blocks (continuation lines joined)."""
    in_block, pending = False, ""
    for line in (DEPLOY / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block, pending = line.strip() in ("```sh", "```bash", "```console"), ""
            continue
        if not in_block:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        argv = _readme_argv(shlex.split(full, comments=True))
        if argv is not None:
            yield f"README.md: {full.strip()}", argv


def _all_commands() -> list[Command]:
    return [*_compose_commands(), *_k8s_commands(), *_systemd_commands(),
            *_dockerfile_commands(), *_readme_commands()]  # fmt: skip


def test_the_deploy_files_parse() -> None:
    assert yaml.safe_load(COMPOSE.read_text())["services"]
    kinds = {doc["kind"] for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert {"Job", "Deployment", "Secret", "PersistentVolumeClaim"} <= kinds
    for path in SYSTEMD:
        sections = re.findall(r"^\[(\w+)\]$", path.read_text(), flags=re.MULTILINE)
        assert sections == ["Unit", "Service", "Install"], path.name


def test_every_deployment_runs_the_migration_the_workers_and_ingest() -> None:
    """Each way to deploy has its migration, workers and ingest watcher (so the check below
    cannot pass by finding nothing)."""
    for source in (_compose_commands, _k8s_commands):
        found = {tuple(argv[:2]) if argv[0] == "db" else (argv[0],) for _, argv in source()}
        assert {("db", "upgrade"), ("worker",), ("ingest",)} <= found, source.__name__
    found = {argv[0] for _, argv in _systemd_commands()}
    assert {"worker", "ingest"} <= found


@pytest.mark.parametrize("where, argv", [pytest.param(w, a, id=w[:70]) for w, a in _all_commands()])
def test_every_pylcogt_command_in_deploy_exists(where: str, argv: list[str]) -> None:
    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}\n  pylcogt rejects it (exit {exc.code}): {stderr.getvalue()}")
