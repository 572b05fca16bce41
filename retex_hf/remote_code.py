"""Self-contained model code for a checkpoint, so `trust_remote_code=True` loads it without retex_hf.

transformers' own mechanism (`custom_object_save`) copies the model class's module file and its
same-folder relative imports (``from .x import y``). Our inference code spans several packages
(``routing/``, ``offsets/``, ...), so that copy would be incomplete. Instead the bundle is
*generated* from the package's own source at save time, so there is one source of truth:

``modeling_retex.py`` is every module that `retex_hf.modeling_retex` needs for inference, the
configuration included, found by following its imports and concatenated in dependency order with
the intra-package imports removed (``ast`` finds them; the text around them, comments included, is
kept). One file, not a separate ``configuration_retex.py``: transformers loads the config and the
model classes from per-file-hash module folders, and two copies of `RetexConfig` would make
``isinstance(config, RetexConfig)`` fail in `RetexModel.from_pretrained`.

A module that needs a package other than torch, transformers, safetensors, huggingface_hub or the
standard library (e.g. `retex_hf.peft_export` needs peft) stays out of the bundle: a function that
imports it lazily raises a clear error from the bundle instead. Anything the flattening cannot
preserve (two modules defining one name, star imports, circular imports, a module-level import of
an excluded module) raises `RemoteCodeError` at save time, naming the module and line, rather
than writing code that would fail on someone else's machine.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "retex_hf"
ROOT_MODULE = f"{PACKAGE}.modeling_retex"
MODELING_FILE = "modeling_retex.py"
# Third-party packages the bundle may import: transformers' own dependencies (check_imports demands them).
ALLOWED_PACKAGES = frozenset({"torch", "transformers", "safetensors", "huggingface_hub"})


class RemoteCodeError(RuntimeError):
    """The package's source uses a form the bundler cannot flatten; the message names module and line."""


@dataclass
class _Module:
    name: str
    path: Path
    source: str
    tree: ast.Module
    imports: list[tuple[ast.stmt, str, bool]] = field(default_factory=list)  # (node, target module, module-level)
    external: set[str] = field(default_factory=set)  # top-level third-party/stdlib packages it imports


def _source_of(name: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"cannot find the source of {name}")
    path = Path(spec.origin)
    return path, path.read_text(encoding="utf-8")


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """Absolute names of the package modules an import statement refers to (empty: not ours)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != PACKAGE:
            return []
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if node.module is None:  # from . import a, b: each name is a submodule
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _parse(name: str) -> _Module:
    path, source = _source_of(name)
    tree = ast.parse(source, filename=str(path))
    module = _Module(name, path, source, tree)
    module_level = {id(node) for node in tree.body}
    module_level |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = _resolve(name, node, path.name == "__init__.py")
            if targets:
                for target in targets:
                    module.imports.append((node, target, id(node) in module_level and not _type_checking(tree, node)))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
                module.external.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                module.external.update(alias.name.split(".")[0] for alias in node.names)
    return module


def _type_checking(tree: ast.Module, node: ast.stmt) -> bool:
    for top in tree.body:
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test) and node in top.body:
            return True
    return False


def _missing_packages(module: _Module) -> list[str]:
    """Packages the module imports that the bundle may not require."""
    return sorted(module.external - ALLOWED_PACKAGES - set(sys.stdlib_module_names))


def _collect() -> list[_Module]:
    """Modules the bundle holds, in dependency order (each after the modules it imports at load time).

    A module is left out when it needs a package outside `ALLOWED_PACKAGES`, or imports such a
    module at module level (transitively); a lazy import of a left-out module becomes a raise.
    """
    found: dict[str, _Module] = {}
    excluded: dict[str, str] = {}  # name -> why
    todo = [ROOT_MODULE]
    while todo:
        name = todo.pop()
        if name in found or name in excluded:
            continue
        module = _parse(name)
        missing = _missing_packages(module)
        if missing:
            excluded[name] = f"needs {', '.join(missing)}"
            continue
        found[name] = module
        todo.extend(target for _, target, _ in module.imports)
    changed = True
    while changed:  # a module that imports a left-out module at load time cannot be bundled either
        changed = False
        for name, module in list(found.items()):
            for node, target, module_level in module.imports:
                if module_level and target in excluded:
                    excluded[name] = (
                        f"imports {target} at module level (line {node.lineno}; {target} {excluded[target]})"
                    )
                    del found[name]
                    changed = True
                    break
    if ROOT_MODULE in excluded:
        raise RemoteCodeError(
            f"{ROOT_MODULE} cannot be bundled: {excluded[ROOT_MODULE]}. Import what inference does not need "
            "inside the functions that use it."
        )
    reachable, todo = set(), [ROOT_MODULE]  # only what the bundled modules still import
    while todo:
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            todo.extend(t for _, t, _ in found[name].imports if t in found)
    found = {name: module for name, module in found.items() if name in reachable}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise RemoteCodeError(f"circular module-level imports: {' -> '.join(chain + (name,))}")
        visiting.add(name)
        for _, target, module_level in found[name].imports:
            if module_level and target in found:
                visit(target, chain + (name,))
        visiting.discard(name)
        order.append(name)

    for name in [ROOT_MODULE, *sorted(found)]:
        visit(name, ())
    return [found[name] for name in order]


def _top_level_names(module: _Module) -> dict[str, str]:
    """Name -> what binds it, for every top-level binding; imports of the same object may repeat."""
    names: dict[str, str] = {}
    for node in module.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = f"def in {module.name} line {node.lineno}"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name) and leaf.id != "__all__":
                        names[leaf.id] = f"assignment in {module.name} line {node.lineno}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                names[bound] = f"import {alias.name if alias.asname else bound}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] != PACKAGE:
            for alias in node.names:
                names[alias.asname or alias.name] = f"from {node.module} import {alias.name}"
    return names


def _check_collisions(modules: list[_Module]) -> None:
    seen: dict[str, str] = {}
    for module in modules:
        for name, what in _top_level_names(module).items():
            if name.startswith("__") or name == "annotations":
                continue
            if name in seen and seen[name] != what:
                raise RemoteCodeError(
                    f"name {name!r} is bound twice in the flattened bundle ({seen[name]}; {what}): rename one of them"
                )
            seen[name] = what


def _rewrite(module: _Module, bundled: set[str]) -> str:
    """The module's source with intra-package imports replaced, line numbers otherwise kept."""
    lines = module.source.splitlines()
    replacements: dict[int, tuple[int, list[str]]] = {}
    for node, target, _ in module.imports:
        if node.lineno in replacements:
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        if indent.strip():
            raise RemoteCodeError(f"{module.name} line {node.lineno}: put the import on its own line")
        if isinstance(node, ast.Import):
            raise RemoteCodeError(f"{module.name} line {node.lineno}: use `from . import x`, not `import {PACKAGE}.x`")
        new = []
        if target in bundled:
            for alias in node.names:
                if alias.name == "*":
                    raise RemoteCodeError(f"{module.name} line {node.lineno}: star imports cannot be flattened")
                if node.module is None:  # from . import backbones: a namespace of that module's names
                    new.append(f"{alias.asname or alias.name} = _namespace({target!r})")
                elif alias.asname and alias.asname != alias.name:
                    new.append(f"{alias.asname} = {alias.name}")
            new = new or ["pass"]
        else:
            what = ", ".join(alias.name for alias in node.names)
            new = [f"raise ImportError({f'{what} needs the {PACKAGE} package (pip install retex-hf)'!r})"]
        replacements[node.lineno] = (node.end_lineno, [indent + text for text in new])
    for node in module.tree.body:  # each module's __all__ would overwrite the previous one's: drop them
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            replacements[node.lineno] = (node.end_lineno, [])
    out, i = [], 0
    while i < len(lines):
        if i + 1 in replacements:
            end, new = replacements[i + 1]
            out.extend(new)
            i = end
            continue
        stripped = lines[i].strip()
        if stripped != "from __future__ import annotations":
            out.append(lines[i])
        i += 1
    return "\n".join(out)


_HEADER = '''"""ReTeX model code, generated by retex_hf {version} from its own modules for trust_remote_code loading.

Do not edit: it is regenerated at every save. Modules, in order: {modules}.
"""

from __future__ import annotations

import types as _types

_MODULE_NAMES: dict[str, list[str]] = {{}}


def _namespace(module: str) -> _types.SimpleNamespace:
    """Stands in for `from . import module`: that module's top-level names, as they are defined here."""
    return _types.SimpleNamespace(**{{n: globals()[n] for n in _MODULE_NAMES[module] if n in globals()}})
'''


def build_modeling_source() -> str:
    """The flattened ``modeling_retex.py``."""
    from . import __version__

    modules = _collect()
    _check_collisions(modules)
    bundled = {m.name for m in modules}
    parts = [_HEADER.format(version=__version__, modules=", ".join(m.name for m in modules))]
    for module in modules:
        names = sorted(n for n in _top_level_names(module) if not n.startswith("__"))
        parts.append(f"\n# {'=' * 30} {module.name} ({module.path.name})\n")
        parts.append(_rewrite(module, bundled))
        parts.append(f"\n_MODULE_NAMES[{module.name!r}] = {names!r}\n")
    source = "\n".join(parts)
    compile(source, MODELING_FILE, "exec")  # a syntax error here is a bundler bug: fail at save, not at load
    return source


def write_remote_code(directory: str | Path) -> list[Path]:
    """Write the bundle into ``directory``; returns the paths written."""
    path = Path(directory) / MODELING_FILE
    path.write_text(build_modeling_source(), encoding="utf-8")
    return [path]
