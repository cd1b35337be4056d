#!/usr/bin/env python3
"""Regenerate ``chainer_finetune/caffe/caffe_pb2.py`` from ``caffe.proto``.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/gen_caffe_pb2.py          # rewrite caffe_pb2.py
    python tools/gen_caffe_pb2.py --check  # exit 1 if caffe_pb2.py is stale

The module is produced by the protoc bundled with grpcio-tools
(``python -m grpc_tools.protoc``), so no system protoc is needed::

    pip install grpcio-tools

A current protoc emits a ``ValidateProtobufRuntimeVersion(...)`` call (plus the
import of ``google.protobuf.runtime_version`` it needs) that makes the module
refuse any protobuf runtime older than protoc itself, and that import does not
even exist before protobuf 5.26.  chainer_finetune must import under protobuf
4.x, 5.x, 6.x and 7.x, so this script removes exactly that guard, checking the
text it removes and failing loudly if protoc's output does not look as
expected.  Nothing else in protoc's output is changed; a header saying how
the file was generated is added after protoc's coding line.

Only the standard library and grpc_tools are used.  The output depends only
on caffe.proto and the grpcio-tools version, so it is reproducible.
"""

import argparse
import difflib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "chainer_finetune", "caffe")
PROTO_NAME = "caffe.proto"
OUTPUT = os.path.join(PROTO_DIR, "caffe_pb2.py")
COMMAND = "python tools/gen_caffe_pb2.py"

EXIT_STALE = 1
EXIT_NO_GRPC_TOOLS = 2
EXIT_UNEXPECTED_OUTPUT = 3

INSTALL_HINT = (
    "grpc_tools is not importable by %s.\n"
    "Install the protoc bundled with grpcio-tools, e.g.:\n"
    "    %s -m pip install grpcio-tools\n"
    "then run again:  %s"
)

# The two pieces of the runtime-version guard emitted by protoc >= 26 (protobuf
# python 5.26+).  Both must be present exactly once; both are removed.
GUARD_IMPORT_RE = re.compile(
    r"^from google\.protobuf import runtime_version as _runtime_version\n",
    re.M,
)
GUARD_CALL_RE = re.compile(
    r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n"
    r"    _runtime_version\.Domain\.PUBLIC,\n"
    r"    \d+,\n"
    r"    \d+,\n"
    r"    \d+,\n"
    r"    '[^'\n]*',\n"
    r"    '" + re.escape(PROTO_NAME) + r"'\n"
    r"\)\n",
    re.M,
)
CODING_LINE = "# -*- coding: utf-8 -*-\n"


class GenerationError(Exception):
    """protoc's output is not what this script knows how to post-process."""


def _have_grpc_tools():
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError:
        return False
    return True


def _protoc(args):
    """Run grpc_tools' protoc with *args* in PROTO_DIR; return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc"] + list(args),
        cwd=PROTO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if proc.returncode != 0:
        raise GenerationError(
            "protoc %s failed (exit %d):\n%s%s"
            % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
        )
    return proc.stdout


def tool_versions():
    """Return (protoc version string, grpcio-tools version)."""
    protoc_version = _protoc(["--version"]).strip()  # e.g. "libprotoc 35.1"
    try:
        grpc_tools_version = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        grpc_tools_version = "unknown"
    return protoc_version, grpc_tools_version


def strip_runtime_guard(text):
    """Remove protoc's runtime-version guard from generated *text*.

    Raises GenerationError unless the import and the call each occur exactly
    once in the expected form, and no other reference to the guard remains.
    """
    guards = (("import", GUARD_IMPORT_RE), ("call", GUARD_CALL_RE))
    for name, pattern in guards:
        found = len(pattern.findall(text))
        if found != 1:
            raise GenerationError(
                "expected exactly one runtime-version guard %s in protoc's "
                "output, found %d; protoc's output format changed, update %s"
                % (name, found, os.path.relpath(__file__, ROOT))
            )
        text = pattern.sub("", text, count=1)
    if "_runtime_version" in text or "ValidateProtobufRuntimeVersion" in text:
        raise GenerationError(
            "a reference to _runtime_version is left after removing the guard"
        )
    return text


def add_header(text, protoc_version, grpc_tools_version):
    """Insert the 'how this was generated' header after the coding line."""
    if not text.startswith(CODING_LINE):
        raise GenerationError(
            "protoc's output does not start with %r" % CODING_LINE)
    header = (
        "# GENERATED FILE, DO NOT EDIT.  Regenerate with:\n"
        "#     %s\n"
        "# from chainer_finetune/caffe/%s by %s (grpcio-tools %s).\n"
        "# The generator removed protoc's ValidateProtobufRuntimeVersion"
        " guard\n"
        "# (and its import) so that this module imports under protobuf"
        " 4.x-7.x;\n"
        "# the rest below is protoc's output unchanged.\n"
        % (COMMAND, PROTO_NAME, protoc_version, grpc_tools_version)
    )
    return CODING_LINE + header + text[len(CODING_LINE):]


def generate():
    """Return the full text of caffe_pb2.py as it should be committed."""
    protoc_version, grpc_tools_version = tool_versions()
    with tempfile.TemporaryDirectory(prefix="gen_caffe_pb2_") as out_dir:
        _protoc(["-I.", "--python_out=" + out_dir, PROTO_NAME])
        generated = os.path.join(out_dir, "caffe_pb2.py")
        with open(generated, "r", encoding="utf-8", newline="") as f:
            text = f.read()
    text = strip_runtime_guard(text)
    return add_header(text, protoc_version, grpc_tools_version)


HEADER_VERSION_RE = re.compile(
    r"^# from .* by (.+) \(grpcio-tools ([^)]+)\)\.$", re.M)


def check(expected):
    """Compare *expected* with the committed file; return an exit status."""
    rel = os.path.relpath(OUTPUT, ROOT)
    try:
        with open(OUTPUT, "r", encoding="utf-8", newline="") as f:
            current = f.read()
    except FileNotFoundError:
        print("%s does not exist; run: %s" % (rel, COMMAND), file=sys.stderr)
        return EXIT_STALE
    if current == expected:
        print("%s is up to date." % rel)
        return 0
    diff = list(
        difflib.unified_diff(
            current.splitlines(True),
            expected.splitlines(True),
            rel + " (committed)",
            rel + " (regenerated)",
        )
    )
    for line in diff[:60]:
        sys.stderr.write(line if len(line) <= 200 else line[:200] + "\n")
    if len(diff) > 60:
        print("... (%d more diff lines)" % (len(diff) - 60), file=sys.stderr)
    committed = HEADER_VERSION_RE.search(current)
    wanted = HEADER_VERSION_RE.search(expected)
    if committed and wanted and committed.groups() != wanted.groups():
        print(
            "\n%s was generated by %s (grpcio-tools %s), but this run used "
            "%s (grpcio-tools %s).  To check it, install the same version:\n"
            "    %s -m pip install grpcio-tools==%s\n"
            "or, if caffe.proto changed or you mean to move to the newer "
            "protoc, regenerate with: %s"
            % ((rel,) + committed.groups() + wanted.groups()
               + (sys.executable, committed.group(2), COMMAND)),
            file=sys.stderr,
        )
    else:
        print(
            "\n%s is stale: it does not match caffe.proto.  "
            "Regenerate with: %s"
            % (rel, COMMAND),
            file=sys.stderr,
        )
    return EXIT_STALE


def write(text):
    tmp = OUTPUT + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, OUTPUT)
    print("wrote %s" % os.path.relpath(OUTPUT, ROOT))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and exit 1 if the "
        "committed caffe_pb2.py differs",
    )
    args = parser.parse_args(argv)

    if not _have_grpc_tools():
        print(INSTALL_HINT % (sys.executable, sys.executable, COMMAND),
              file=sys.stderr)
        return EXIT_NO_GRPC_TOOLS
    try:
        text = generate()
    except GenerationError as e:
        print("error: %s" % e, file=sys.stderr)
        return EXIT_UNEXPECTED_OUTPUT
    if args.check:
        return check(text)
    write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
