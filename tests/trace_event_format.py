"""The Chrome/Perfetto trace-event format as a JSON schema, for tests of the trace files we write."""

from __future__ import annotations

# The trace-event format (the Chrome Trace Event Format document's JSON object form): the event
# kinds this writer emits, each with the fields a viewer requires of it.
_EVENT = {
    "type": "object",
    "required": ["name", "ph", "pid"],
    "properties": {
        "name": {"type": "string"},
        "cat": {"type": "string"},
        "ph": {"enum": ["X", "i", "M", "s", "f"]},
        "ts": {"type": "number", "minimum": 0},
        "dur": {"type": "number", "minimum": 0},
        "pid": {"type": "integer"},
        "tid": {"type": "integer"},
        "id": {"type": "integer"},
        "s": {"enum": ["g", "p", "t"]},
        "bp": {"enum": ["e"]},
        "cname": {"type": "string"},
        "args": {"type": "object"},
    },
    "allOf": [
        {"if": {"properties": {"ph": {"const": "X"}}}, "then": {"required": ["ts", "dur", "tid"]}},
        {"if": {"properties": {"ph": {"enum": ["i", "s", "f"]}}}, "then": {"required": ["ts", "tid"]}},
        {"if": {"properties": {"ph": {"enum": ["s", "f"]}}}, "then": {"required": ["id"]}},
        {"if": {"properties": {"ph": {"const": "M"}}}, "then": {"required": ["args"]}},
    ],
}
TRACE_EVENT_FORMAT = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "traceEvents": {"type": "array", "items": _EVENT},
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "otherData": {"type": "object"},
    },
}
