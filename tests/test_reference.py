"""tests/reference.py stays independent: it imports numpy and nothing of the code under test."""
import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def test_reference_imports_only_numpy():
    with open(os.path.join(HERE, "reference.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or ".").split(".")[0])
    assert imported == {"numpy"}
