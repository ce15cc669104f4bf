"""dvc.yaml's deps, checked against the code: every project module a stage's command can import
(its import closure, read from the source, imports inside functions included) is a dep of that
stage, so that editing it reruns the stage. Computed, not listed: a new import without its dep
fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.cli import STAGES
from trilemma.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"trilemma": ROOT / "src" / "trilemma", "pipeline": ROOT / "pipeline"}
FAMILY_DIR = "src/trilemma/families"
TRIVIAL = {"src/trilemma/__init__.py", "pipeline/__init__.py", "pipeline/cli.py"}
LOADER = "src/trilemma/loader.py"  # imports a family's module by its registry `module` path


def module_file(name: str) -> Path | None:
    """The file of a dotted project module name (a package's __init__.py), or None."""
    head, *rest = name.split(".")
    if head not in PACKAGES:
        return None
    base = PACKAGES[head].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, packages: bool = True) -> set[str]:
    """Dotted names of the project modules `path` imports anywhere in its body; `packages`
    False: `from package import submodule` names the submodule only, not the package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = package.removeprefix("src.")
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names
                          if module_file(f"{base}.{alias.name}") is not None}
            found.update(submodules)
            if packages or len(submodules) < len(node.names):
                found.add(base)
    return {name for name in found if module_file(name) is not None}


def closure(command_module: str, family: str | None) -> set[str]:
    """Repo-relative files reachable from `command_module`. The loader imports a family's module
    by name: a family's stage reaches its own module there, and no other family's (the modules
    the families share, such as `_checks`, it reaches through their imports)."""
    todo, files = [command_module], set()
    while todo:
        path = module_file(todo.pop())
        rel = path.relative_to(ROOT).as_posix()
        if rel in files:
            continue
        if rel.startswith(f"{FAMILY_DIR}/") and path.stem in REGISTRY and path.stem != family:
            continue
        files.add(rel)
        names = imported_modules(path)
        if rel == LOADER and family is not None:
            names.add(REGISTRY[family].module)
        for name in names:
            # a package's parent __init__ runs too
            parts = name.split(".")
            todo.extend(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return files - TRIVIAL


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def stages(field: str = "deps") -> list[tuple[str, str, list[str], str | None]]:
    """(stage name, command, `field` (deps or params) with ${item} filled in, family) for each
    stage DVC expands from dvc.yaml and the project's params.yaml (a foreach stage once per
    family)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lists = {"${families}": params["families"], "${i2i_families}": params["i2i_families"],
             "${control.families}": params["control"]["families"]}
    out = []
    for name, stage in spec.items():
        body = stage.get("do", stage)
        command = body["cmd"].split("trilemma", 1)[1].split()[0]
        deps = body.get(field, [])
        if "foreach" not in stage:
            out.append((name, command, deps, None))
            continue
        for item in lists[stage["foreach"]]:
            out.append((f"{name}@{item}", command, [d.replace("${item}", item) for d in deps],
                        item))
    return out


STAGE_LIST = stages()
PARAM_LIST = stages("params")


@pytest.mark.parametrize("name, command, deps, family", STAGE_LIST,
                         ids=[s[0] for s in STAGE_LIST])
def test_every_imported_module_is_a_dep(name, command, deps, family):
    module = STAGES[command].split(":")[0]
    missing = sorted(path for path in closure(module, family) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports these without listing them: {missing}"


@pytest.mark.parametrize("name, command, keys, family", PARAM_LIST,
                         ids=[s[0] for s in PARAM_LIST])
def test_a_stage_whose_params_differ_by_profile_lists_profile(name, command, keys, family):
    """DVC compares a {quick: a, full: b} mapping as written, not the value the profile picks:
    only `profile` among the stage's params makes a change of profile rerun it."""
    from trilemma.config import PROFILES, resolve_profile

    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def value(key: str):  # "data.test_size" -> params["data"]["test_size"]
        node = params
        for part in key.split("."):
            node = node[part]
        return node

    per_profile = [key for key in keys if key != "profile" and len(
        {repr(resolve_profile(value(key), profile)) for profile in PROFILES}) > 1]
    assert "profile" in keys or not per_profile, \
        f"dvc.yaml stage {name!r} reads {per_profile}, which differ by profile, without `profile`"


def test_a_family_stage_reaches_its_own_module_and_what_it_imports():
    files = closure("pipeline.train", "ddpm")
    assert {"src/trilemma/families/ddpm.py", "src/trilemma/denoising.py"} <= files
    assert "src/trilemma/families/vae.py" not in files
    assert "src/trilemma/families/_checks.py" in files  # ddpm.py imports it


def test_the_closure_follows_imports_inside_functions():
    files = closure("pipeline.train_classifier", None)
    assert "src/trilemma/metrics.py" in files  # imported inside the command's body
    assert "src/trilemma/config.py" in files


STAGE_MODULES = sorted({spec.split(":")[0] for spec in STAGES.values()})


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_a_stage_imports_no_other_stage(module):
    """Stages stay thin: what two stages share lives in the library (src/trilemma) or in
    pipeline/common.py, so a stage's deps never drag in another stage's command."""
    others = imported_modules(module_file(module)) & (set(STAGE_MODULES) - {module})
    assert not others, f"{module} imports the stage modules {sorted(others)}"


def test_the_report_s_pipeline_time_counts_every_stage_dvc_runs_before_it():
    from trilemma.stage_log import before_report

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    expected = {(command, family) for _, command, _, family in STAGE_LIST if command != "report"}
    assert before_report(params["families"], params["i2i_families"],
                         params["control"]["families"]) == expected
