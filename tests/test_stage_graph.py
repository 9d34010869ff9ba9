"""The stage declaration (tasks/graph.py) against what the stages really do, and dvc.yaml against it.

Each stage runs on a tiny config in a process of its own (tests/stage_probe.py), which records every
project module imported by the end of the stage and every params section the stage's code reads: a
module outside the stage's declared code would let `dvc repro` call a stale stage up to date, and an
undeclared params section would let an edit of it go unnoticed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from projects import BIN, TINY, cli_env, write_params

from tasks.graph import ORDER, STAGES, dvc_yaml

REPO = Path(__file__).resolve().parents[1]
# The declaration itself: dvc.yaml is generated from it, so DVC sees an edit of it that matters to a stage
# as an edit of that stage. (Package markers, __init__.py files holding only a docstring, are no code either.)
NOT_STAGE_CODE = {"tasks/graph.py"}
INFRA = "infra"  # decides no output, so it is no stage's dep: stages may import it, it imports no stage code


def test_dvc_yaml_is_generated_from_the_declaration():
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml was edited: run `ldmflow dvc-yaml`"


def test_dvc_yaml_check_fails_on_a_hand_edit(tmp_path):
    ldmflow = [str(BIN / "ldmflow"), "dvc-yaml"]
    (tmp_path / "dvc.yaml").write_text(dvc_yaml().replace("- tasks/train_unet\n", ""))
    check = subprocess.run([*ldmflow, "--check"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 1 and "ldmflow dvc-yaml" in check.stderr
    subprocess.run(ldmflow, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "dvc.yaml").read_text() == dvc_yaml()


def test_stage_code_is_folders_and_files_that_exist():
    for stage in STAGES.values():
        for dep in stage.deps:
            if dep.startswith(("tasks/", "models/")):
                assert (REPO / dep).exists(), f"{stage.name}: {dep} does not exist"


@pytest.fixture(scope="module")
def records(tmp_path_factory, s3_server) -> dict[str, dict]:
    """What each stage imported and read, the six run one after another in one tiny project."""
    root = tmp_path_factory.mktemp("graph-project")
    write_params(root, TINY, s3_server, f"graph-{os.getpid()}")
    env = cli_env(s3_server, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "stage_probe.py"), str(root), str(root), *ORDER],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {name: json.loads((root / f"{name}.json").read_text()) for name in ORDER}


def _defines_nothing(module: str) -> bool:
    """A package marker: an __init__.py that holds only its docstring."""
    body = ast.parse((REPO / module).read_text()).body
    return module.endswith("__init__.py") and all(isinstance(node, ast.Expr) for node in body)


def _under(module: str, deps: tuple[str, ...]) -> bool:
    return any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ORDER)
def test_every_module_a_stage_imports_is_among_its_deps(records, name):
    modules = records[name]["modules"]
    assert any(m.startswith(STAGES[name].code[0]) for m in modules)  # the probe saw the stage's own code
    deps = STAGES[name].deps
    stage_code = [m for m in modules if m not in NOT_STAGE_CODE and not _defines_nothing(m)]
    outside = [m for m in stage_code if not _under(m, (*deps, INFRA))]
    assert not outside, f"{name} imports code that is not among its dvc.yaml deps: {outside}"
    assert not any(_under(dep, (INFRA,)) for dep in deps)


def test_infra_imports_no_stage_and_no_flow_code():
    """What infra/ does cannot depend on stage code: it would then decide outputs without being a dep."""
    found = []
    for path in sorted((REPO / INFRA).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("tasks", "flows")
            ]
    assert not found, found


@pytest.mark.e2e
@pytest.mark.parametrize("name", ORDER)
def test_a_stage_declares_exactly_the_params_it_reads(records, name):
    assert records[name]["reads"] == sorted(STAGES[name].params)
