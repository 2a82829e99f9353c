"""qr_phenix imports point down a fixed stack of layers, and no two modules
import each other (directly or around a circle).

Every `import` and `from ... import` counts, at module level and inside
functions alike (a function-local import hides a cycle, it does not remove
it); relative imports are resolved.  The walk reads the sources with `ast`
and imports nothing.
"""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "qr_phenix"

#: Lowest layer first.  A module may import modules of its own layer or of a
#: layer above it in this list, never one below.  An entry names a module,
#: or a package with all its submodules; the most specific entry wins.
LAYERS = [
    # facts that need nothing else of qr_phenix: the package (BLAS preload),
    # unit conversions, atomic file writes, engine thread settings, residue names
    ("foundation", ["qr_phenix", "qr_phenix.units", "qr_phenix.files",
                    "qr_phenix.threads", "qr_phenix.residue_names"]),
    # facts about a model: the monomer library and CCD dictionaries, charge and
    # hydrogen chemistry, charged groups and symmetry copies, QM regions with caps
    ("model", ["qr_phenix.monomer_library", "qr_phenix.ccd_dictionary",
               "qr_phenix.chemistry", "qr_phenix.chemical_groups", "qr_phenix.qm_region"]),
    # quantum engines (ASE calculators), their registry and settings
    ("engines", ["qr_phenix.engines"]),
    # QM restraints for cctbx, whole model, selection or fragments, and the
    # local model of the QM energy between QM gradients
    ("restraints", ["qr_phenix.restraints_manager", "qr_phenix.fragmentation",
                    "qr_phenix.qm_expansion"]),
    # the macro-cycle refinement: targets, weights, B, the model handed back
    ("refinement", ["qr_phenix.refinement"]),
    # model preparation (hydrogens, missing atoms) and validation
    ("preparation and diagnostics", ["qr_phenix.preparation", "qr_phenix.validation"]),
    # the 1us0 benchmark toolkit: reference, simulated data, perturbation, scoring
    ("benchmark toolkit", ["qr_phenix.benchmark"]),
    # ProgramTemplate programs: PHIL and wiring
    ("programs", ["qr_phenix.programs"]),
    # thin command-line dispatchers (qr.<name>)
    ("command line", ["qr_phenix.command_line"]),
    # `python -m` entry points and the runnable example
    ("entry points", ["qr_phenix.refine", "qr_phenix.prepare", "qr_phenix.fragments_check",
                      "qr_phenix.benchmark.helix_1us0", "qr_phenix.example"]),
]


def _modules():
    """{module name: (path, is_package)} for every .py file of the package."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _resolve(name, modules):
    """The module a dotted name refers to (a name inside a module -> the module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module, path, is_package, modules):
    """{imported qr_phenix module: first line} of one module, at any depth."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [base + "." + alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "qr_phenix":
                continue
            target = _resolve(name, modules)
            # a module's own parent packages are loaded before it anyway
            if target and target != module and not module.startswith(target + "."):
                found.setdefault(target, node.lineno)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(m, path, is_package, modules)
            for m, (path, is_package) in modules.items()}


def layer_of(module):
    """Index into LAYERS, by the most specific entry naming the module."""
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "qr_phenix" and
                                         module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def test_every_module_has_a_layer():
    missing = sorted(m for m in _graph() if layer_of(m) is None)
    assert not missing, "add these modules to LAYERS in tests/tst_architecture.py: %s" % missing


def test_imports_point_down():
    upward = []
    for module, imports in sorted(_graph().items()):
        here = layer_of(module)
        for target, line in sorted(imports.items()):
            if target.startswith(module + "."):
                continue  # a package importing its own submodules
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append("%s:%d (%s) imports %s (%s)" % (
                    module, line, LAYERS[here][0], target, LAYERS[there][0]))
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def _cycles(graph):
    """Groups of modules that reach each other through imports (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_cycles_and_upward_imports():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []
    assert layer_of("qr_phenix.engines.tblite") < layer_of("qr_phenix.restraints_manager")
    assert layer_of("qr_phenix.benchmark.helix_1us0") > layer_of("qr_phenix.command_line.benchmark")
    graph = _graph()
    # function-local imports count: engines/__init__ loads tblite lazily
    assert "qr_phenix.engines.tblite" in graph["qr_phenix.engines"]


def test_engine_options_are_the_engine_settings_fields():
    # an option is written in the PHIL and in EngineSettings, and copied by name
    import dataclasses
    import iotbx.phil
    from qr_phenix.engines.base import EngineSettings
    from qr_phenix.engines.settings import ENGINE_OPTIONS_PHIL, FROM_THE_MODEL
    options = iotbx.phil.parse(ENGINE_OPTIONS_PHIL).objects[0].objects
    fields = [f.name for f in dataclasses.fields(EngineSettings) if f.name not in FROM_THE_MODEL]
    assert sorted(o.name for o in options) == sorted(fields)


def test_comments_point_into_the_repository():
    # the project's notes file lives outside the repository: state the fact,
    # or point into docs/
    outside = "NO" + "TES"
    root = PACKAGE_DIR.parent
    paths = [root / "README.md"] + [
        path for folder in ("qr_phenix", "docs", "tests", "benchmarks", "scripts")
        for path in sorted((root / folder).rglob("*"))
        if path.suffix in (".py", ".md", ".txt", ".sh")]
    hits = ["%s:%d" % (path.relative_to(root), number) for path in paths
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if outside in line]
    assert not hits, "references to a file outside the repository: %s" % hits
