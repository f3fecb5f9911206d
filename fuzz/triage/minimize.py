"""Minimisation of a finding: the smallest program whose kernel run still diverges from the model
with the same signature, or for a leak, that still leaks the same caches.

A candidate program *reproduces* when it is valid (reference.program.validate), the model runs
it without error, and one of up to `retries` attempts (`attempt`) shows the expected signature
(fuzz/triage/rerun.py): a kernel run that diverges with it, or for a leak, the leak oracle's
re-check (fuzz/compare/leaks.py leak_check: 1 + RERUNS measured runs).  Verdicts are cached per
program id, so no program is tried twice.

The search, repeated until nothing changes (the result is then 1-minimal for every step below):

1. truncation: ops after the divergent op cannot influence it (ops run in order), so every
   reproducing candidate is cut right after the op that diverged (a leak needs every op);
2. ddmin (Zeller) over the ops before the divergent op, which is always kept (for a leak, over
   all ops); removing an op that creates a handle removes the ops using that handle with it
   (they could not run without it);
3. argument simplification, one op or one handle at a time: options back to their defaults,
   path components dropped, a handle replaced by an older one of the same kind (fewer handles,
   fewer mounts), and finally the handles renamed to be dense (p1 p2 p3 ..., m1 m2 ...).

A program that ends with its state check (reference/state_check.py) is shrunk without it: every
candidate runs with the check derived again from it, so a finding of a check op minimises to a
program whose own check still shows it (such a divergence needs every op before the check: the
divergent op is then not kept as such), and the result ends with its check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from reference.program import OP_SPECS, Op, Program, ProgramError, make_op, substitute, validate
from reference.state_check import split_state_check, with_state_check
from reference.trace import Trace
from targets.base import Target

from .rerun import Goal, attempt

DEFAULT_RETRIES = 3


class NotReproduced(Exception):
    """The original program does not reproduce the signature: nothing to minimise."""

    def __init__(self, message: str, kernel_runs: int):
        super().__init__(message)
        self.kernel_runs = kernel_runs


@dataclass(frozen=True)
class Minimized:
    program: Program
    kernel_runs: int
    seconds: float
    steps: int                  # accepted reductions


class _Reproducer:
    """Answers "does this candidate reproduce?" with the kernel runs it costs, cached."""

    def __init__(self, goal: Goal, run_kernel: Callable[[Program], Trace], model: Target, retries: int,
                 checked: bool = False):
        self.goal, self.model, self.checked = goal, model, checked
        self.run_kernel = self._counted(run_kernel)
        self.retries = max(1, retries)
        self.keeps_last = goal.leak is None           # the divergent op; a leak has none
        self.verdicts: dict[str, int | None] = {}   # program id -> index of the last op needed
        self.kernel_runs = 0
        self.last_seen = ""                           # a signature seen instead, for messages
        self.in_check = False                         # the last verdict came from a check op

    def _counted(self, run_kernel: Callable[[Program], Trace]) -> Callable[[Program], Trace]:
        def run(program: Program) -> Trace:
            self.kernel_runs += 1
            return run_kernel(program)
        return run

    def divergent_index(self, ops: tuple[Op, ...]) -> int | None:
        """Index of the last op the reproduction needs, or None (also for invalid ops)."""
        try:
            program = validate(ops)
        except ProgramError:
            return None
        if program.id in self.verdicts:
            return self.verdicts[program.id]
        run = with_state_check(program) if self.checked else program
        expected = self.model.run(run)
        verdict = None
        if expected.outcome == "ok":
            for _ in range(self.retries):
                verdict, seen = attempt(self.goal, run, expected, self.run_kernel)
                if verdict is not None:
                    break
                self.last_seen = seen or self.last_seen
        self.in_check = verdict is not None and verdict >= len(ops)
        verdict = min(verdict, len(ops) - 1) if verdict is not None else None
        self.verdicts[program.id] = verdict
        return verdict


def minimize(program: Program, goal: Goal, run_kernel: Callable[[Program], Trace], model: Target,
             retries: int = DEFAULT_RETRIES) -> Minimized:
    """Raises NotReproduced when `program` itself does not reproduce within `retries` runs."""
    started = time.monotonic()
    base = split_state_check(program)
    tester = _Reproducer(goal, run_kernel, model, retries, checked=base < len(program))
    index = tester.divergent_index(program.ops[:base])
    if index is None:
        seen = f" (runs showed: {tester.last_seen})" if tester.last_seen else ""
        raise NotReproduced(f"the program does not reproduce `{goal.signature}` in {tester.retries} "
                            f"kernel run(s){seen}", tester.kernel_runs)
    tester.keeps_last = tester.keeps_last and not tester.in_check
    ops, steps = program.ops[:index + 1], 0
    while True:
        reduced, taken = _ddmin(ops, tester)
        reduced, simplified = _simplify(reduced, tester)
        steps += taken + simplified
        if reduced == ops:
            break
        ops = reduced
    result = with_state_check(Program(ops)) if tester.checked else Program(ops)
    return Minimized(result, tester.kernel_runs, time.monotonic() - started, steps)


# ---- ddmin over ops -----------------------------------------------------------------------------

def _without(ops: tuple[Op, ...], drop: set[int], keep_last: bool) -> tuple[Op, ...] | None:
    """ops minus the indices in drop and every op using a handle a dropped op created; None when
    that removes the last op and keep_last (the divergent one, always kept) or every op."""
    gone: set[str] = set()
    kept = []
    for index, op in enumerate(ops):
        if index in drop or gone.intersection(op.handles_used()):
            if op.ret:
                gone.add(op.ret)
            if keep_last and index == len(ops) - 1:
                return None
            continue
        kept.append(op)
    return tuple(kept) or None


def _try(candidate: tuple[Op, ...] | None, tester: _Reproducer) -> tuple[Op, ...] | None:
    """The candidate cut after its divergent op when it reproduces, else None."""
    if candidate is None:
        return None
    index = tester.divergent_index(candidate)
    return None if index is None else candidate[:index + 1]


def _ddmin(ops: tuple[Op, ...], tester: _Reproducer) -> tuple[tuple[Op, ...], int]:
    """Zeller's ddmin over the ops (but the divergent last one); returns (ops, accepted reductions)."""
    granularity, steps = 2, 0
    while len(ops) > 1:
        removable = len(ops) - tester.keeps_last
        granularity = min(granularity, removable)
        chunks = [set(range(start * removable // granularity, (start + 1) * removable // granularity))
                  for start in range(granularity)]
        # Keeping only one chunk (dropping the complement) first: it shrinks fastest.
        complements = [set(range(removable)) - chunk for chunk in chunks] if granularity > 2 else []
        for drop in complements + chunks:
            reduced = _try(_without(ops, drop, tester.keeps_last), tester)
            if reduced is not None:
                ops, steps = reduced, steps + 1
                granularity = max(granularity - 1, 2) if drop in chunks else 2
                break
        else:
            if granularity >= removable:
                break
            granularity = min(granularity * 2, removable)
    return ops, steps


# ---- argument simplification ---------------------------------------------------------------------

def _simplify(ops: tuple[Op, ...], tester: _Reproducer) -> tuple[tuple[Op, ...], int]:
    """Accepts the first reproducing simpler variant, again and again, until none is left."""
    steps = 0
    progress = True
    while progress:
        progress = False
        for candidate in _simpler_variants(ops):
            reduced = _try(candidate, tester)
            if reduced is not None and reduced != ops:
                ops, steps, progress = reduced, steps + 1, True
                break
    return ops, steps


def _simpler_variants(ops: tuple[Op, ...]) -> Iterator[tuple[Op, ...]]:
    for index, op in enumerate(ops):
        for simpler in _simpler_ops(op):
            yield ops[:index] + (simpler,) + ops[index + 1:]
    yield from _merged_handles(ops)
    dense = _dense(ops)
    if dense != ops:
        yield dense


def _simpler_ops(op: Op) -> Iterator[Op]:
    """The op with one option back to its default, or its path one component shorter."""
    spec = OP_SPECS[op.kind]
    args = dict(op.args)
    for name, _, default in spec.options:
        if args[name] != default:
            changed = {**args, name: default}
            if name == "kind":                  # a dummy has neither peer nor peer_in
                changed.update(peer="", peer_in="")
            yield from _remade(op, changed)
    path = args.get("path")
    if path:
        parts = path.split("/")
        first = 1 if parts[0].startswith("{m") else 0
        for drop in range(len(parts) - 1, first - 1, -1):
            shorter = "/".join(parts[:drop] + parts[drop + 1:])
            if shorter:
                yield from _remade(op, {**args, "path": shorter})


def _remade(op: Op, args: dict) -> Iterator[Op]:
    try:
        yield make_op(op.kind, op.ret, **args)
    except ValueError:
        return


def _merged_handles(ops: tuple[Op, ...]) -> Iterator[tuple[Op, ...]]:
    """Every use of a handle replaced by an older handle of the same kind (processes and threads
    may stand in for each other as actors): the op creating it may then go."""
    created = ["p1"] + [op.ret for op in ops if op.ret]
    for position, handle in enumerate(created):
        for older in created[:position]:
            if older[0] == handle[0] or {older[0], handle[0]} == {"p", "t"}:
                renamed = _renamed(ops, {handle: older}, only_uses=True)
                if renamed is not None:
                    yield renamed


def _dense(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """Handles renamed p1 p2 ..., t1 t2 ..., m1 ..., f1 ... in order of creation."""
    counts = {"p": 1, "t": 0, "m": 0, "f": 0}
    mapping = {}
    for op in ops:
        if op.ret:
            counts[op.ret[0]] += 1
            mapping[op.ret] = f"{op.ret[0]}{counts[op.ret[0]]}"
    return _renamed(ops, mapping, only_uses=False) or ops


def _renamed(ops: tuple[Op, ...], mapping: dict[str, str], only_uses: bool) -> tuple[Op, ...] | None:
    """ops with handles renamed in arguments and path templates (and in `x =` unless only_uses);
    None when an op does not accept the new handle (e.g. a thread as reap's child)."""
    result = []
    for op in ops:
        args = {}
        for name, value in op.args:
            if isinstance(value, str) and value in mapping:
                value = mapping[value]
            elif name == "path":
                value = substitute(value, lambda handle: "{" + mapping.get(handle, handle) + "}")
            args[name] = value
        ret = op.ret if only_uses or op.ret is None else mapping.get(op.ret, op.ret)
        try:
            result.append(make_op(op.kind, ret, **args))
        except ValueError:
            return None
    return tuple(result)
