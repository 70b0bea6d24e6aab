"""Text every machine has: the docstrings of Python's standard library, read at run time.

demo:tinylm trains on one part and evaluates on the other; any language model's default eval text is
the held-out part. Modules are split by name (every EVAL_EVERY-th in sorted order is held out), so the
two parts never share a docstring and the split is the same on every machine with the same Python.
"""

from __future__ import annotations

import functools
import importlib
import inspect

# Modules that import cleanly anywhere (no GUI, no side effects), sorted: the order fixes the text.
MODULES = tuple(sorted((
    "abc", "argparse", "array", "ast", "base64", "bisect", "bz2", "calendar", "cmath", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "email.message", "enum", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.cookies", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "json.decoder", "keyword", "linecache", "locale", "logging", "lzma",
    "mailbox", "math", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pickletools",
    "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string",
    "stringprep", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "token", "tokenize", "trace", "traceback", "types", "typing", "unittest.case", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zoneinfo",
)))
EVAL_EVERY = 7


def _docstrings(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module this Python build lacks: its text is simply not part of the corpus
        return []
    texts = [inspect.getdoc(module) or ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            texts.append(inspect.getdoc(member) or "")
    return [t.strip() for t in texts if len(t.strip()) > 40 and t.isascii()]


@functools.cache
def stdlib_text(part: str) -> str:
    """'train' or 'eval': the docstrings of that part of MODULES, one blank line between them."""
    chosen = [m for i, m in enumerate(MODULES) if (i % EVAL_EVERY == EVAL_EVERY - 1) == (part == "eval")]
    return "\n\n".join(text for module in chosen for text in _docstrings(module))
