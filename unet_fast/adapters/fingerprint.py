"""What proves that a library's `forward` is the code an adapter reproduces: a hash of its syntax
tree (docstrings, comments, formatting and line numbers left out), compared with the hashes of the
versions the adapter was written against. A version whose forward differs is never patched."""
import ast
import hashlib
import inspect
import textwrap
from typing import Optional


def forward_fingerprint(cls, name: str = "forward") -> Optional[str]:
    """sha256 (first 16 hex digits) of `cls.<name>`'s syntax tree, or None when its source cannot
    be read (a frozen or compiled install): then nothing of that class is patched."""
    func = getattr(cls, name, None)
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    tree = ast.parse(source).body[0]
    if not isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    tree.body, tree.decorator_list = body or [ast.Pass()], []
    # ast.unparse, not ast.dump: dump's text changes between Python versions, unparse's does not
    # for the plain code hashed here.
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]
