"""The collectives a compiled program really runs, read from its optimized (scheduled) HLO text.

Why parse text: counting the word "all-reduce" in `compiled.as_text()` counts names, metadata and
fused copies (the issue's first count, 672, was such a count). Here each collective instruction is
counted once where it executes: in the entry computation, in a computation the entry reaches by
control flow (while bodies and conditions times their known trip count, conditional branches,
calls), or inside a fusion called from one of those (TPU wraps async collectives in fusions whose
root is an `AsyncCollectiveStart` custom call; GPU uses `all-gather-start`/`-done` pairs).

Overlap: an async collective overlaps compute when the schedule places compute instructions
(fusions, convolutions, dots, custom calls that are not themselves collectives) between its start
and its done. A synchronous collective overlaps nothing.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute", "ragged-all-to-all")
_ELEMENT_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COMPUTE_OPCODES = ("fusion", "convolution", "dot", "custom-call")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = ")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")  # a layout's non-zero memory space: on-chip memory (TPU VMEM)
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation)="
                    r"(\{[^}]*\}|%[\w.-]+)")
_OPCODE = re.compile(r"[\]})] [a-z][\w-]*\(")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass
class Instruction:
    name: str
    type: str
    opcode: str
    operands: list[str]
    attributes: str


@dataclasses.dataclass
class Collective:
    kind: str  # one of KINDS
    bytes: int  # the larger of its result and operands: the full buffer the group exchanges
    executions: int  # times it runs per call of the program (trip counts of enclosing loops)
    asynchronous: bool
    overlapped: bool  # async with compute scheduled between start and done


def type_bytes(hlo_type: str, hbm_only: bool = False) -> int:
    """Bytes of an HLO type string (`bf16[32,85]{1,0:T(8,128)}` or a tuple of such), tiling ignored;
    `hbm_only` leaves out arrays whose layout puts them in on-chip memory (`S(1)`)."""
    total = 0.0
    for element, dims, layout in _ARRAY.findall(hlo_type):
        if hbm_only and _ON_CHIP.search(layout):
            continue
        size = 1
        for dim in filter(None, dims.split(",")):
            size *= int(dim)
        total += _ELEMENT_BYTES.get(element, 0) * size
    return int(total)


def _split_type(rest: str) -> tuple[str, str]:
    """`rest` after "name = " -> (type, the text from the opcode on). A type ends in "]", "}" or ")"
    and is followed by " opcode(": tuple types hold spaces, but only after commas."""
    match = _OPCODE.search(rest)
    if match is None:
        type_text, _, tail = rest.partition(" ")
        return type_text, tail
    return rest[: match.start() + 1], rest[match.start() + 2:]


def parse_computations(hlo_text: str) -> tuple[str, dict[str, list[Instruction]]]:
    """(entry computation name, {computation name: its instructions in schedule order})."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
            continue
        match = _INSTRUCTION.match(line)
        if match is None or current is None:
            continue
        type_text, tail = _split_type(line[match.end():])
        opcode, _, arguments = tail.partition("(")
        operand_text, _, attributes = arguments.partition(")")
        current.append(Instruction(name=match.group(1), type=type_text, opcode=opcode.strip(),
                                   operands=re.findall(r"%([\w.-]+)", operand_text), attributes=attributes))
    return entry, computations


def _called(instruction: Instruction) -> list[tuple[str, str]]:
    """(attribute, computation name) pairs an instruction calls."""
    return [(key, name) for key, value in _CALLS.findall(instruction.attributes)
            for name in re.findall(r"%([\w.-]+)", value)]


def _base_kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in KINDS else None


def collectives(hlo_text: str | tuple[str, dict[str, list[Instruction]]]) -> list[Collective]:
    """Every collective the program runs, with its bytes, execution count and overlap. Takes the HLO
    text or its `parse_computations`."""
    entry, computations = parse_computations(hlo_text) if isinstance(hlo_text, str) else hlo_text
    # TPU runs a reduce-scatter as an all-reduce inside a fusion of a computation it names
    # "all-reduce-scatter" (each chip keeps its slice of the sum): count it as the reduce-scatter it is.
    inner = {name: [("reduce-scatter" if kind == "all-reduce" and name.startswith("all-reduce-scatter") else kind,
                     type_bytes(inside.type)) for inside in body if (kind := _base_kind(inside.opcode))]
             for name, body in computations.items()}
    starts_async = {name: any('custom_call_target="AsyncCollectiveStart"' in inside.attributes for inside in body)
                    for name, body in computations.items()}

    def runs(instruction: Instruction) -> list[tuple[str, int]]:
        """(kind, result bytes) of the collectives an instruction runs: itself, or inside its fusion."""
        kind = _base_kind(instruction.opcode)
        if kind and instruction.opcode.endswith("-start") and kind in ("all-gather", "collective-permute"):
            arrays = [type_bytes(f"{element}[{dims}]") for element, dims, _ in _ARRAY.findall(instruction.type)]
            return [(kind, sum(arrays[len(arrays) // 2:]))]  # its result is (operands..., results...)
        if kind:
            return [(kind, type_bytes(instruction.type))]
        if instruction.opcode != "fusion":
            return []
        return [found for _, callee in _called(instruction) for found in inner.get(callee, [])]

    def is_compute(instruction: Instruction) -> bool:
        return instruction.opcode in _COMPUTE_OPCODES and not runs(instruction) and not any(
            starts_async.get(callee) or "AsyncCollective" in instruction.attributes
            for _, callee in _called(instruction))

    found: list[Collective] = []

    def visit(name: str, executions: int, seen: tuple[str, ...]) -> None:
        instructions = computations.get(name, [])
        types = {instruction.name: instruction.type for instruction in instructions}
        users: dict[str, list[int]] = {}
        for index, instruction in enumerate(instructions):
            for operand in instruction.operands:
                users.setdefault(operand, []).append(index)
        for index, instruction in enumerate(instructions):
            kinds = runs(instruction)
            if kinds:
                done = _done_index(instructions, index, users)
                overlapped = done is not None and any(map(is_compute, instructions[index + 1: done]))
                operand_bytes = max((type_bytes(types.get(op, "")) for op in instruction.operands), default=0)
                for kind, size in kinds:
                    # An all-gather's operand is its shard; a reduce-scatter's is the full buffer.
                    full = size if kind == "all-gather" else max(size, operand_bytes)
                    found.append(Collective(kind=kind, bytes=full, executions=executions,
                                            asynchronous=done is not None, overlapped=overlapped))
            trips = int(next(iter(_TRIP_COUNT.findall(instruction.attributes)), 1))
            for key, callee in _called(instruction):
                if instruction.opcode == "fusion" or callee in seen or key == "to_apply":
                    continue  # fusions were looked into above; to_apply is a reduction's scalar body
                visit(callee, executions * (trips if instruction.opcode == "while" else 1), seen + (callee,))

    visit(entry, 1, (entry,))
    return found


def _done_index(instructions: list[Instruction], start: int, users: dict[str, list[int]]) -> int | None:
    """Index of the done that completes the async collective at `start`, or None when synchronous.

    The done consumes the start's result directly (GPU) or through get-tuple-elements (TPU)."""
    frontier = [start]
    while frontier:
        index = frontier.pop()
        for user in users.get(instructions[index].name, []):
            instruction = instructions[user]
            if instruction.opcode.endswith("-done") or "async-collective-done" in instruction.name:
                return user
            if instruction.opcode == "get-tuple-element":
                frontier.append(user)
    return None


_NO_TRAFFIC = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id",
               "replica-id", "while", "conditional", "call")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# (substring of a metadata op_name, the part of the model it names), first match wins.
_PARTS = (("/attn1/to_", "self-attention projections"), ("/attn1/", "self-attention scores and softmax"),
          ("/attn2/to_", "cross-attention projections"), ("/attn2/", "cross-attention scores and softmax"),
          ("/ff/", "feed-forward (GEGLU)"), ("/resnets_", "res blocks (conv, GroupNorm, SiLU)"),
          ("/attentions_", "transformer norms and in/out projections"), ("samplers_", "down/upsampling convs"),
          ("/unet/", "UNet stem (conv_in/out, time embedding)"), ("/fusion", "fusion"))


def traffic_by_part(hlo_text: str | tuple[str, dict[str, list[Instruction]]]) -> dict[str, float]:
    """HBM bytes per call split by the part of the model that moves them (metadata op_name), forward
    and backward apart: each executed top-level instruction reads its operands and writes its result
    (a fusion's internals stay on chip; arrays placed in on-chip memory and the done halves of async
    ops are not counted), close to what XLA's "bytes accessed" counts. Collectives are their own
    part; what names no model part (optimizer, EMA, loss, RNG) is "optimizer, EMA and the rest"."""
    entry, computations = parse_computations(hlo_text) if isinstance(hlo_text, str) else hlo_text
    parts: dict[str, float] = {}

    def visit(name: str, executions: int, seen: tuple[str, ...]) -> None:
        instructions = computations.get(name, [])
        types = {instruction.name: instruction.type for instruction in instructions}
        for instruction in instructions:
            if instruction.opcode in ("while", "conditional", "call"):
                trips = int(next(iter(_TRIP_COUNT.findall(instruction.attributes)), 1))
                for _, callee in _called(instruction):
                    if callee not in seen:
                        visit(callee, executions * (trips if instruction.opcode == "while" else 1), seen + (callee,))
            if instruction.opcode in _NO_TRAFFIC or instruction.opcode.endswith("-done"):
                continue  # an async op's traffic is counted at its start
            if instruction.opcode in ("copy-start", "slice-start"):
                # A move between HBM and on-chip memory: (destination, source or slice, context).
                arrays = [type_bytes(f"{element}[{dims}]") for element, dims, _ in _ARRAY.findall(instruction.type)]
                moved, part = min((size for size in arrays if size >= 64), default=0), "async HBM <-> on-chip moves"
            else:
                moved = type_bytes(instruction.type, hbm_only=True) + sum(
                    type_bytes(types.get(op, ""), hbm_only=True) for op in instruction.operands)
                part = _part(instruction, computations)
            parts[part] = parts.get(part, 0.0) + moved * executions

    visit(entry, 1, (entry,))
    return dict(sorted(parts.items(), key=lambda item: -item[1]))


def _part(instruction: Instruction, computations: dict[str, list[Instruction]]) -> str:
    """The model part an instruction's traffic belongs to. TPU fuses compute into its async
    collectives (e.g. an attention softmax beside a weight all-gather): such a fusion is the part
    its compute names, and "collectives" only when nothing in it names a model part."""
    inner = [inside for _, callee in _called(instruction) for inside in computations.get(callee, [])]
    compute = [inside for inside in inner if not _base_kind(inside.opcode)]
    names = _OP_NAME.findall(instruction.attributes) or [name for inside in compute
                                                          for name in _OP_NAME.findall(inside.attributes)]
    op_name = max(names, key=len, default="")
    part = next((label for key, label in _PARTS if key in op_name), None)
    if _base_kind(instruction.opcode) or "collective" in instruction.name or (
            part is None and any(_base_kind(inside.opcode) for inside in inner)):
        return "collectives"
    if part is None:
        return "optimizer, EMA and the rest"
    return f"{part}, {'backward' if 'transpose(' in op_name else 'forward'}"


def summarize(found: Iterable[Collective]) -> dict[str, dict[str, int]]:
    """Per kind: count (executions per step), bytes (summed over executions), async and overlapped counts."""
    summary: dict[str, dict[str, int]] = {}
    for collective in found:
        row = summary.setdefault(collective.kind, dict(count=0, bytes=0, asynchronous=0, overlapped=0))
        row["count"] += collective.executions
        row["bytes"] += collective.bytes * collective.executions
        row["asynchronous"] += collective.executions * collective.asynchronous
        row["overlapped"] += collective.executions * collective.overlapped
    return dict(sorted(summary.items()))
