#!/usr/bin/env python3
"""Generates the partners' API reference (Markdown) from the comments in proto/.

    python3 api_reference.py [OUTPUT]      # default: ../../proto/API.md

Uses grpcio-tools' protoc to read the contracts with their source comments.
CI regenerates it and fails when the committed reference is out of date.
"""
import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))

# Path numbers in FileDescriptorProto / DescriptorProto / ServiceDescriptorProto.
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, METHOD, VALUE = 2, 2, 2


def load():
    import grpc_tools

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = sorted(
        os.path.relpath(os.path.join(root, n), PROTO)
        for root, _, names in os.walk(PROTO)
        for n in names
        if n.endswith(".proto")
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{wkt}", "--include_source_info",
                          f"--descriptor_set_out={out}", *files])
        if rc != 0:
            raise SystemExit(f"protoc failed with {rc}")
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    return fds


def comments(fd):
    return {tuple(loc.path): loc.leading_comments.strip() for loc in fd.source_code_info.location}


def text(c):
    return " ".join(line.strip() for line in c.splitlines()).strip()


def field_type(f):
    if f.type_name:
        t = f.type_name.lstrip(".")
    else:
        t = descriptor_pb2.FieldDescriptorProto.Type.Name(f.type).replace("TYPE_", "").lower()
    return f"repeated {t}" if f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED else t


def render(fds):
    out = ["# colend API reference", "",
           "Generated from the comments in `proto/` by `tests/python/api_reference.py`; do not edit by hand.",
           "Every call identifies a partner with the `x-colend-partner-id` metadata header where the",
           "service says so; every error carries `google.rpc.ErrorInfo` (domain `colend.io`).", ""]
    for fd in fds.file:
        c = comments(fd)
        out += [f"## `{fd.package}` — `{fd.name}`", ""]
        for si, s in enumerate(fd.service):
            out += [f"### service `{s.name}`", "", text(c.get((SERVICE, si), "")), ""]
            out += ["| method | request → response | what it does |", "|---|---|---|"]
            for mi, m in enumerate(s.method):
                stream = "stream " if m.server_streaming else ""
                out.append(f"| `{m.name}` | `{m.input_type.lstrip('.').split('.')[-1]}` → "
                           f"`{stream}{m.output_type.lstrip('.').split('.')[-1]}` | "
                           f"{text(c.get((SERVICE, si, METHOD, mi), ''))} |")
            out.append("")
        for ei, e in enumerate(fd.enum_type):
            out += [f"### enum `{e.name}`", "", text(c.get((ENUM, ei), "")), "",
                    "| value | meaning |", "|---|---|"]
            for vi, v in enumerate(e.value):
                out.append(f"| `{v.name}` = {v.number} | {text(c.get((ENUM, ei, VALUE, vi), ''))} |")
            out.append("")
        for mi, m in enumerate(fd.message_type):
            out += [f"### message `{m.name}`", "", text(c.get((MESSAGE, mi), "")), ""]
            if m.field:
                out += ["| field | type | meaning |", "|---|---|---|"]
                for fi, f in enumerate(m.field):
                    out.append(f"| `{f.name}` = {f.number} | `{field_type(f)}` | "
                               f"{text(c.get((MESSAGE, mi, FIELD, fi), ''))} |")
                out.append("")
    return "\n".join(line for line in out) .replace("\n\n\n", "\n\n") + "\n"


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(PROTO, "API.md")
    with open(target, "w", encoding="utf-8") as f:
        f.write(render(load()))
    print(f"API reference written to {target}")


if __name__ == "__main__":
    main()
