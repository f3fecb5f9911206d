"""Mutation of corpus programs: splice two programs, change one argument, renumber handles; a
mutant is kept only if it is a valid program."""

from __future__ import annotations

import random

from reference.program import HIDEPID_VALUES, Op, Program, ProgramError, make_op, validate

def mutate(program: Program, donor: Program, rng: random.Random, tries: int = 20) -> Program | None:
    """Insert, delete, splice or change an argument; returns a valid program or None."""
    for _ in range(tries):
        ops = list(program.ops)
        how = rng.choice(("insert", "delete", "splice", "argument"))
        if how == "delete" and ops:
            del ops[rng.randrange(len(ops))]
        elif how == "insert" and donor.ops:
            ops.insert(rng.randrange(len(ops) + 1), rng.choice(donor.ops))
        elif how == "splice" and donor.ops:
            cut = rng.randrange(len(ops) + 1)
            ops = ops[:cut] + list(donor.ops[rng.randrange(len(donor.ops)):])
        elif how == "argument" and ops:
            index = rng.randrange(len(ops))
            ops[index] = _change_argument(ops[index], program, rng) or ops[index]
        candidate = _renumber(ops)
        if candidate is None or candidate == program:
            continue
        try:
            return validate(candidate.ops)
        except ProgramError:
            continue
    return None


def _change_argument(op: Op, program: Program, rng: random.Random) -> Op | None:
    args = dict(op.args)
    handles = sorted({h for o in program.ops for h in o.handles_used()} | {o.ret for o in program.ops if o.ret})
    name = rng.choice(list(args)) if args else None
    if name is None:
        return None
    value = args[name]
    if name in ("actor", "child") and handles:
        candidates = [h for h in handles if h[0] in ("pt" if name == "actor" else "p")]
        args[name] = rng.choice(candidates) if candidates else value
    elif name == "hidepid":
        args[name] = rng.choice(HIDEPID_VALUES)
    elif name in ("newpid", "lazy"):
        args[name] = 1 - value
    elif name == "path" and "/" in value:
        args[name] = value.rsplit("/", 1)[0]
    else:
        return None
    try:
        return make_op(op.kind, op.ret, **args)
    except ValueError:
        return None


def _renumber(ops: list[Op]) -> Program | None:
    """Splices can create a handle twice: keep the first creation, drop later duplicates."""
    created, kept = {"p1"}, []
    for op in ops:
        if op.ret and op.ret in created:
            continue
        if op.ret:
            created.add(op.ret)
        kept.append(op)
    return Program(tuple(kept)) if kept else None
