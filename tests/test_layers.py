"""The package layers: building and timing a network import no training stack, no module imports
itself round a circle, and the config resolvers are registered by one explicit call."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import CONFIG_DIR, ROOT
from dsnet.models import create_model
from dsnet.models.cost import count_params
from dsnet.models.deploy import deploy_form

PACKAGE = ROOT / "dsnet"


def run_python(code: str) -> str:
    """``code`` run by a fresh interpreter in the repository root; its stdout and stderr together."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_building_counting_deploying_and_timing_a_network_import_neither_lightning_nor_hydra():
    out = run_python(
        "import sys\n"
        "import dsnet.models\n"
        "import dsnet.latency\n"
        "from dsnet.models.cost import model_cost\n"
        "from dsnet.models.deploy import deploy_form\n"
        "net = dsnet.models.create_model('mobilenet_v1', width=0.25, num_classes=10, small_input=True)\n"
        "print(model_cost(deploy_form(net), (3, 16, 16))['params'])\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if m in sys.modules))\n"
    )
    net = deploy_form(create_model("mobilenet_v1", width=0.25, num_classes=10, small_input=True))
    assert out.splitlines()[-2:] == [str(count_params(net)), "[]"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages Python initialises before ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the dsnet modules it imports, at module level or inside functions.

    Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so those count too, except
    the packages that contain the importer: they are already being initialised when it runs.
    """
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        inside = {*ancestors(name), package}
        edges = set()
        for target in targets:
            edges.update(t for t in (*ancestors(target), target) if t in files and t not in inside | {name})
            if target in files and target in inside and target != name:
                edges.add(target)  # `from dsnet.models import x` inside dsnet.models: the package itself
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_dsnet_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"dsnet.models", "dsnet.config", "dsnet.matching", "dsnet.latency"} <= set(graph)
    assert "dsnet.matching" in graph["dsnet.config"]  # lazy imports count: this edge is inside a resolver
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_sees_an_import_circle_through_a_package_init():
    # dsnet.models imports convert, which imports cost; cost taking layer_type from dsnet.models
    # (not from a module inside it) would close a circle that fails when dsnet.models.cost is
    # imported first.
    graph = {"dsnet.models": {"dsnet.models.convert"}, "dsnet.models.convert": {"dsnet.models.cost"},
             "dsnet.models.cost": {"dsnet.models"}}
    assert find_cycle(graph) == ["dsnet.models", "dsnet.models.convert", "dsnet.models.cost", "dsnet.models"]


def test_a_notebook_composes_a_config_after_one_call():
    out = run_python(
        "from hydra import compose, initialize_config_dir\n"
        "import dsnet.config\n"
        f"with initialize_config_dir(config_dir={str(CONFIG_DIR)!r}, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['data.image_size=16'])\n"
        "try:\n"
        "    cfg.model.small_input\n"
        "except Exception as err:\n"
        "    print('before:', type(err).__name__, str(err).splitlines()[0])\n"
        "dsnet.config.register_resolvers()\n"
        "dsnet.config.register_resolvers()\n"
        "print('after:', cfg.model.small_input, cfg.data.image_size)\n"
    )
    assert out.splitlines() == [
        "before: UnsupportedInterpolationType Unsupported interpolation type dsnet.small_input",
        "after: True 16",
    ]
