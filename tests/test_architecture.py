"""The shape of the code in flows/, tasks/ and prompt_core/, checked from its source (ast).

* No module imports another's private name (``from a.b import _x``, or ``a.b._x`` after
  ``import a.b``): what modules share is public and lives where it belongs.
* No import cycles between modules, counting every import statement: module level, inside
  functions (where cycles used to hide) and under ``if TYPE_CHECKING:``.
* No module writes the environment when imported.
* Loading and checking a study file imports neither torch nor transformers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.flow_helpers import write_task

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "prompt_core")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module imported, line)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _modules() -> dict[str, Module]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name, is_package = _module_name(path)
            mods[name] = Module(name, path, ast.parse(path.read_text(), str(path)), is_package)
    return mods


MODULES = _modules()


def _base(mod: Module, node: ast.ImportFrom) -> str | None:
    """The module ``from <base> import ...`` names (relative imports resolved)."""
    if not node.level:
        return node.module
    parts = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _scan(mod: Module) -> tuple[list[tuple[str, int]], dict[str, str], list[str]]:
    """(imported project modules with their lines, local name -> project module it binds,
    private names imported from another project module as ``module: line: from x import _y``)."""
    imports: list[tuple[str, int]] = []
    bound: dict[str, str] = {}
    private: list[str] = []
    where = mod.path.relative_to(REPO)
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    imports.append((a.name, node.lineno))
                    head = a.name.partition(".")[0]  # ``import a.b`` binds ``a``
                    bound[a.asname or head] = a.name if a.asname else head
        elif isinstance(node, ast.ImportFrom):
            base = _base(mod, node)
            if base is None:
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULES:  # ``from a import b`` where b is a module
                    imports.append((full, node.lineno))
                    bound[a.asname or a.name] = full
                elif base in MODULES:
                    imports.append((base, node.lineno))
                    if _private(a.name) and base != mod.name:
                        private.append(f"{where}:{node.lineno}: from {base} import {a.name}")
    return imports, bound, private


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _private_attributes(mod: Module, bound: dict[str, str]) -> list[str]:
    """``a.b._x`` where ``a.b`` is another project module this one imported."""
    found = []
    for node in ast.walk(mod.tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        owner = _dotted(node.value)
        if owner is None:
            continue
        head, _, rest = owner.partition(".")
        if head not in bound:
            continue
        target = bound[head] + (f".{rest}" if rest else "")
        if target in MODULES and target != mod.name:
            found.append(f"{mod.path.relative_to(REPO)}:{node.lineno}: {owner}.{node.attr}")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_every_package_and_module():
    """Packages (``__init__.py``, e.g. prompt_core.backbones) are modules of the graph."""
    assert {"flows.cli", "tasks.units", "prompt_core.config"} <= set(MODULES)
    assert MODULES["prompt_core.backbones"].is_package
    assert "prompt_core.backbones.base" in MODULES


def test_the_scan_finds_private_names_however_imported():
    src = textwrap.dedent("""
        import tasks.units
        import prompt_core.config as cfg
        from tasks import units as u
        from . import units
        from .units import _hidden
        from .fake import _own
        def f():
            tasks.units._a(); cfg._b; u._c; units._d; cfg.__doc__; units.public
    """)
    mod = Module("tasks.fake", REPO / "tasks" / "fake.py", ast.parse(src), False)
    imports, bound, private = _scan(mod)
    assert {m for m, _ in imports} == {"tasks.units", "prompt_core.config"}
    assert private == ["tasks/fake.py:6: from tasks.units import _hidden"]
    assert sorted(_private_attributes(mod, bound)) == [
        "tasks/fake.py:9: cfg._b", "tasks/fake.py:9: tasks.units._a", "tasks/fake.py:9: u._c",
        "tasks/fake.py:9: units._d"]


def test_no_private_name_is_imported_across_modules():
    problems = []
    for mod in MODULES.values():
        _, bound, private = _scan(mod)
        problems += private + _private_attributes(mod, bound)
    assert not problems, ("private names used from another module (make them public, in the "
                          "module they belong to):\n  " + "\n  ".join(problems))


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], list[int]] = {}
    for mod in MODULES.values():
        imports, _, _ = _scan(mod)
        for target, line in imports:
            if target != mod.name:
                graph.setdefault(mod.name, set()).add(target)
                lines.setdefault((mod.name, target), []).append(line)
    problems = []
    for comp in _cycles(graph):
        edges = [f"{a} -> {b} (line {', '.join(map(str, sorted(set(lines[a, b]))))})"
                 for a in comp for b in sorted(graph.get(a, ())) if b in comp]
        problems.append(" / ".join(comp) + ":\n    " + "\n    ".join(edges))
    assert not problems, "import cycles:\n  " + "\n  ".join(problems)


def _environ_writes(tree: ast.Module) -> list[int]:
    """Lines of module-level statements (not in a function or class) that write os.environ."""
    writes = []

    def writes_environ(node: ast.AST) -> bool:
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                owner = _dotted(n.func.value) or ""
                if owner.endswith("environ") and n.func.attr in (
                        "setdefault", "update", "pop", "clear", "__setitem__"):
                    return True
                if _dotted(n.func) in ("os.putenv", "os.unsetenv"):
                    return True
            if isinstance(n, ast.Assign | ast.AugAssign | ast.Delete):
                targets = n.targets if isinstance(n, ast.Assign | ast.Delete) else [n.target]
                if any(isinstance(t, ast.Subscript) and (_dotted(t.value) or "").endswith(
                        "environ") for t in targets):
                    return True
        return False

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if isinstance(stmt, ast.If | ast.Try | ast.With):  # their blocks run at import
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(stmt, block, []))
                for h in getattr(stmt, "handlers", []):
                    visit(h.body)
                continue
            if writes_environ(stmt):
                writes.append(stmt.lineno)

    visit(tree.body)
    return writes


def test_no_module_writes_the_environment_when_imported():
    problems = [f"{m.path.relative_to(REPO)}:{line}" for m in MODULES.values()
                for line in _environ_writes(m.tree)]
    assert not problems, ("os.environ written at import (do it in a function a command or a "
                          "flow entry point calls, e.g. flows.runtime.prefect_defaults):\n  "
                          + "\n  ".join(problems))
    probe = ast.parse("import os\nos.environ.setdefault('A', '1')\nif True:\n"
                      "    os.environ['B'] = '2'\ndef f():\n    os.environ['C'] = '3'\n")
    assert _environ_writes(probe) == [2, 4]


CHECK_STUDY = textwrap.dedent("""
    import json, sys
    from prompt_core.config import load_study
    from prompt_core.preflight import check_study

    checked = check_study(load_study(sys.argv[1]))
    facts = [(m.hidden_size, m.max_positions, m.on_layers) for m in checked.models]
    after_check = sorted(m for m in ("torch", "transformers") if m in sys.modules)

    from typer.testing import CliRunner
    from flows.cli import app

    res = CliRunner().invoke(app, ["validate", sys.argv[1]])
    print(json.dumps({"facts": facts, "tasks": [t.name for t in checked.tasks],
                      "after_check": after_check, "validate": res.exit_code,
                      "output": res.output,
                      "after_validate": sorted(m for m in ("torch", "transformers")
                                               if m in sys.modules)}))
""")


def test_checking_a_study_imports_neither_torch_nor_transformers(tmp_path, tiny_models):
    """prompt_core.config.load_study + prompt_core.preflight.check_study, and `prompt-transfer
    validate`, on a study with a local model folder and a task folder: the model's facts come
    from its config.json, and neither torch nor transformers is imported."""
    task = write_task(tmp_path, "pos_a", "sentiment")
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({
        "name": "arch", "storage": str(tmp_path / "store"),
        "models": [{"kind": "encoder", "name": "tiny", "model_id": tiny_models["encoder"]},
                   {"kind": "encoder", "name": "minilm"}],
        "tasks": [{"path": str(task)}]}))
    res = subprocess.run([sys.executable, "-c", CHECK_STUDY, str(study)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["facts"] == [[32, 256, 2], [384, 512, 6]]  # tiny BERT, the shipped MiniLM
    assert got["tasks"] == ["pos_a"]
    assert got["after_check"] == [], got
    assert got["validate"] == 0 and "is valid" in got["output"], got["output"]
    assert got["after_validate"] == [], got


def _config_dirs(root: Path) -> dict[str, Path]:
    """config.json-only folders of every model type preflight reads without transformers."""
    from transformers import (
        BertConfig,
        CamembertConfig,
        GPT2Config,
        LlamaConfig,
        RobertaConfig,
        T5Config,
        XLMRobertaConfig,
    )

    small = dict(num_attention_heads=2, intermediate_size=8, vocab_size=64)
    configs = {
        "bert": BertConfig(hidden_size=16, num_hidden_layers=3, max_position_embeddings=40,
                           **small),
        "roberta": RobertaConfig(hidden_size=16, num_hidden_layers=2, pad_token_id=1,
                                 max_position_embeddings=66, **small),
        "xlm-roberta": XLMRobertaConfig(hidden_size=16, num_hidden_layers=2, pad_token_id=3,
                                        max_position_embeddings=30, **small),
        "camembert": CamembertConfig(hidden_size=16, num_hidden_layers=2, **small),
        "gpt2": GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=48, vocab_size=64),
        "llama": LlamaConfig(hidden_size=16, num_hidden_layers=2, max_position_embeddings=99,
                             **small),
        "t5": T5Config(d_model=16, num_layers=3, num_decoder_layers=2, num_heads=2, d_kv=8,
                       d_ff=8, vocab_size=64),
        "t5-same-layers": T5Config(d_model=16, num_layers=3, num_heads=2, d_kv=8, d_ff=8,
                                   vocab_size=64),
    }
    dirs = {}
    for name, cfg in configs.items():
        cfg.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
def test_config_json_facts_match_transformers(tmp_path, kind):
    """For every model type of preflight.CONFIG_LAYOUTS, the facts read from config.json equal
    those transformers gives (AutoConfig, and the model built on the meta device)."""
    from transformers import AutoConfig

    from prompt_core.preflight import (
        CONFIG_LAYOUTS,
        facts_from_config,
        transformers_facts,
    )

    dirs = _config_dirs(tmp_path)
    assert set(CONFIG_LAYOUTS) <= {json.loads((d / "config.json").read_text())["model_type"]
                                   for d in dirs.values()}
    for name, folder in dirs.items():
        config = json.loads((folder / "config.json").read_text())
        from_json = facts_from_config(kind, config)
        expected = transformers_facts(kind, AutoConfig.from_pretrained(folder))
        if from_json is None:  # seq2seq facts of an encoder type: transformers reads them
            assert kind == "seq2seq" and name not in ("t5", "t5-same-layers"), name
            continue
        assert from_json == expected, name


def test_no_test_module_is_imported_by_another():
    """What tests share lives in helper modules (tests/*_helpers.py, the servers), never in a
    test module: importing one runs its module-level code and hides what the tests need."""
    def is_test_module(name: str) -> bool:
        parts = name.split(".")
        return parts[0] == "tests" and parts[-1].startswith("test_")

    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the file's package
                    pkg = path.relative_to(REPO).parent.parts
                    base = list(pkg[:len(pkg) - node.level + 1])
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            found += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}"
                      for n in names if is_test_module(n)]
    assert not found, "\n".join(found)
