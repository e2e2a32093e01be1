"""Every public class and function of the gateway (app/) and the Python client (clients/python) has a
docstring: module-level functions and classes whose names do not start with an underscore, and the
public methods of public classes (properties included). FastAPI route functions are public functions
like any other. Exempt: private and dunder names (``__init__``'s arguments are the class's to
describe), ``@overload`` stubs, and a method whose base class in these packages documents it (its
docstring is inherited). Read with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGES = [Path(ROOT, "app"), Path(ROOT, "clients", "python", "src", "vgate")]

Def = ast.FunctionDef | ast.AsyncFunctionDef


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
            for package in PACKAGES for path in sorted(package.rglob("*.py"))]


def base_names(cls: ast.ClassDef) -> list[str]:
    names = []
    for base in cls.bases:
        node = base.value if isinstance(base, ast.Subscript) else base  # Generic[T], Protocol[T]
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
    return names


def is_overload(fn: Def) -> bool:
    return any(ast.unparse(d).split(".")[-1] == "overload" for d in fn.decorator_list)


def undocumented() -> list[str]:
    parsed = modules()
    classes: dict[str, list[ast.ClassDef]] = {}
    for _, tree in parsed:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(node)

    def inherited(cls: ast.ClassDef, name: str, seen: frozenset[str] = frozenset()) -> bool:
        for base in base_names(cls):
            for parent in classes.get(base, []) if base not in seen else []:
                for item in parent.body:
                    if isinstance(item, Def) and item.name == name and ast.get_docstring(item):
                        return True
                if inherited(parent, name, seen | {base}):
                    return True
        return False

    missing = []
    for path, tree in parsed:
        where = path.relative_to(ROOT)
        for node in tree.body:
            if not isinstance(node, (*Def.__args__, ast.ClassDef)) or node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None and not (isinstance(node, Def) and is_overload(node)):
                missing.append(f"{where}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, Def) and not item.name.startswith("_") and ast.get_docstring(item) is None
                            and not is_overload(item) and not inherited(node, item.name)):
                        missing.append(f"{where}:{item.lineno} {node.name}.{item.name}")
    return missing


def test_every_public_class_and_function_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def test_the_walk_sees_the_packages():
    """The check reads real code: the gateway's and the client's modules, their routes among them."""
    names = {path.name for path, _ in modules()}
    assert {"main.py", "settings.py", "predict.py", "client.py", "modules.py"} <= names
    tree = ast.parse(Path(ROOT, "app", "routers", "predict.py").read_text(encoding="utf-8"))
    routes = [n for n in tree.body if isinstance(n, Def) and any("router." in ast.unparse(d) for d in n.decorator_list)]
    assert routes, "no FastAPI route found in app/routers/predict.py"
