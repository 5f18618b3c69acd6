"""Running the rules: check(vmcs, profile, ...) -> Result.

The processor checks in this order (Intel SDM Vol. 3C "VM Entries"): the basic
checks of VMLAUNCH/VMRESUME, then the VMX controls and the host-state area (a
failure is VMfailValid 7 or 8), then the guest-state area (VM-entry failure, exit
reason 33), then the VM-entry MSR-load area (exit reason 34).  The rules are
registered in that order and in the SDM's order within each class; the first
rule that fails gives the outcome.  (The SDM says the checks of one class "may
be performed in any order"; between controls and host state vmxlab reports the
controls first.)  With all=True every rule is evaluated and every violation listed.
"""
from __future__ import annotations

from typing import Callable

from ..arch import controls as C
from ..arch import fields as F
from ..caps.profile import Profile
from ..vmcs.store import Vmcs
from . import registry as REG
from .facts import facts
from .registry import Unknown
from .result import NotChecked, Result, Violation

Memory = Callable[[int, int], "bytes | None"]

_PIN, _CPU, _SEC = F.PIN_BASED_VM_EXEC_CONTROL, F.CPU_BASED_VM_EXEC_CONTROL, F.SECONDARY_VM_EXEC_CONTROL
_TER, _EXIT, _EXIT2, _ENTRY = (F.TERTIARY_VM_EXEC_CONTROL, F.VM_EXIT_CONTROLS,
                               F.SECONDARY_VM_EXIT_CONTROLS, F.VM_ENTRY_CONTROLS)
_ACT2, _ACT3 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS, C.CPU_BASED_ACTIVATE_TERTIARY_CONTROLS
_EXIT_ACT2 = C.VM_EXIT_ACTIVATE_SECONDARY_CONTROLS
_IA32E, _UG = C.VM_ENTRY_IA32E_MODE, C.SECONDARY_EXEC_UNRESTRICTED_GUEST


_ZEROS = {f.encoding: 0 for f in F.FIELDS}
_NFIELDS = len(_ZEROS)


def all_values(values: dict[int, int]) -> dict[int, int]:
    """Field values of a VMCS that knows every field, absent fields as 0, in a plain
    dict holding every encoding (a plain dict: CPython's fast path for d[key])."""
    v = _ZEROS.copy()
    v.update(values)
    return v


class KnownValues(dict):
    """Field values of a VMCS that knows only some fields (a dump): reading an
    absent field raises Unknown, so the rule is reported as not checked."""
    __slots__ = ()

    def __missing__(self, key: int) -> int:
        f = F.BY_ENCODING.get(key)
        raise Unknown(f.name if f else f"field {key:#x}")


class Entry:
    """The VM entry being checked: the instruction, the state of the processor
    executing it, the physical-memory reader, and the effective control values
    (secondary/tertiary/secondary-exit controls read as 0 when not activated, or
    when the processor does not support activating them, as the SDM says the
    processor treats them)."""
    __slots__ = ("instruction", "host_lma", "mov_ss_blocking", "memory", "vmcs_pointer", "launch_state",
                 "pin", "cpu", "sec", "ter", "exit", "exit2", "entry", "ia32e", "ug")

    def __init__(self, v, k, instruction: str, host_lma: bool, mov_ss_blocking: bool,
                 memory: Memory | None, vmcs_pointer: int | None, launch_state: str):
        self.instruction = instruction
        self.host_lma = host_lma
        self.mov_ss_blocking = mov_ss_blocking
        self.memory = memory
        self.vmcs_pointer = vmcs_pointer
        self.launch_state = launch_state
        cpu = v[_CPU]
        self.pin = v[_PIN]
        self.cpu = cpu
        # "If the 'activate secondary controls' control is 0 (or if the processor does not
        # support the 1-setting of that control), no checks are performed on the secondary
        # controls": likewise for tertiary and secondary VM-exit controls.
        self.sec = v[_SEC] if cpu & _ACT2 & k.cpu_may1 else 0
        self.ter = v[_TER] if cpu & _ACT3 & k.cpu_may1 else 0
        ext = v[_EXIT]
        self.exit = ext
        self.exit2 = v[_EXIT2] if ext & _EXIT_ACT2 & k.exit_may1 else 0
        self.entry = v[_ENTRY]
        self.ia32e = bool(self.entry & _IA32E)
        self.ug = bool(self.sec & _UG)

    def read(self, address: int, size: int) -> bytes:
        """Physical memory, or Unknown when the reader does not have it."""
        data = None if self.memory is None else self.memory(address, size)
        if data is None or len(data) < size:
            raise Unknown(f"memory {address:#x}..{address + size - 1:#x}")
        return data


def _lazy(fn):
    def get(self):
        return fn(self._v, self._k)
    return property(get)


class PartialEntry(Entry):
    """Entry for a VMCS with unknown fields: each effective control is read when a
    rule asks for it, so only the rules that need an unknown control go unchecked."""
    __slots__ = ("_v", "_k")

    def __init__(self, v, k, instruction, host_lma, mov_ss_blocking, memory, vmcs_pointer, launch_state):
        self._v = v
        self._k = k
        self.instruction = instruction
        self.host_lma = host_lma
        self.mov_ss_blocking = mov_ss_blocking
        self.memory = memory
        self.vmcs_pointer = vmcs_pointer
        self.launch_state = launch_state


for _name, _fn in {
    "pin": lambda v, k: v[_PIN], "cpu": lambda v, k: v[_CPU],
    "sec": lambda v, k: v[_SEC] if v[_CPU] & _ACT2 & k.cpu_may1 else 0,
    "ter": lambda v, k: v[_TER] if v[_CPU] & _ACT3 & k.cpu_may1 else 0,
    "exit": lambda v, k: v[_EXIT],
    "exit2": lambda v, k: v[_EXIT2] if v[_EXIT] & _EXIT_ACT2 & k.exit_may1 else 0,
    "entry": lambda v, k: v[_ENTRY],
    "ia32e": lambda v, k: bool(v[_ENTRY] & _IA32E),
    "ug": lambda v, k: bool(v[_CPU] & _ACT2 & k.cpu_may1 and v[_SEC] & _UG),
}.items():
    setattr(PartialEntry, _name, _lazy(_fn))


def _violation(rule: REG.Rule, out, v) -> Violation:
    index = None
    if isinstance(out, str):
        field, message = rule.field, out
        try:
            value = v[F.by_name(field).encoding] if field else None
        except Unknown:
            value = None
    elif len(out) == 3:
        field, value, message = out
    else:
        index, field, value, message = out
    return Violation(rule, field, value, message, index)


def check(vmcs: Vmcs | None, profile: Profile, memory: Memory | None = None,
          instruction: str = "vmlaunch", all: bool = False, host_lma: bool = True,
          mov_ss_blocking: bool = False, vmcs_pointer: int | None = None) -> Result:
    """The outcome of VMLAUNCH/VMRESUME with this current VMCS on this processor.

    vmcs None: there is no current VMCS (VMfailInvalid).  memory: a callable
    (physical address, size) -> bytes, or None when the bytes are not available
    (rules that need them are then "not checked").  host_lma: IA32_EFER.LMA of
    the processor executing the instruction (True: 64-bit mode, as hypervisors
    run).  mov_ss_blocking: that processor is in a MOV-SS shadow.  vmcs_pointer:
    the current-VMCS pointer, for the VMCS-link-pointer check (None: not checked).
    """
    if instruction not in ("vmlaunch", "vmresume"):
        raise ValueError(f"instruction {instruction!r} is neither vmlaunch nor vmresume")
    if vmcs is None:
        return Result.vmfail_invalid(profile.name, instruction)
    k = facts(profile)
    if vmcs.default is None:
        v = KnownValues(vmcs.values)
        # A dump_vmcs text does not say the launch state: the launch-state rules go unchecked.
        e = PartialEntry(v, k, instruction, host_lma, mov_ss_blocking, memory, vmcs_pointer, None)
    else:
        v = all_values(vmcs.values)
        e = Entry(v, k, instruction, host_lma, mov_ss_blocking, memory, vmcs_pointer, vmcs.launch_state)
    violations: list[Violation] = []
    not_checked: list[NotChecked] = []
    for guard, run, n, block in _PLAN:
        if guard is not None:
            try:
                if not guard(v, e):
                    continue
            except Unknown:
                pass                 # evaluate the rules one by one: each says what it lacks
        try:
            if run(v, k, e).count(None) == n:
                continue             # every rule of the run passes
        except Unknown:
            pass
        # Some rule of the run fails or lacks a value: evaluate them one by one, in order.
        for fn, r in block:
            try:
                out = fn(v, k, e)
            except Unknown as u:
                not_checked.append(NotChecked(r, u.what))
                continue
            if out is not None:
                violations.append(_violation(r, out, v))
                if not all:
                    return Result.from_violations(profile.name, instruction, violations, not_checked)
    try:
        _msr_load(v, k, e, all, violations, not_checked)
    except Unknown as u:
        not_checked.extend(NotChecked(r, u.what) for r in _MSR_RULES)
    return Result.from_violations(profile.name, instruction, violations, not_checked)


_BY_FIELDS: dict[frozenset, tuple] = {}


def entry_context(vmcs: Vmcs, profile: Profile, instruction: str = "vmresume", host_lma: bool = True,
                  vmcs_pointer: int | None = None, mov_ss_blocking: bool = False) -> Entry:
    """The Entry (effective controls, processor context) of a VMCS, for reuse by
    check_changed while the VMCS's control fields do not change."""
    values = vmcs.values
    v = values if len(values) >= _NFIELDS else all_values(values)
    return Entry(v, facts(profile), instruction, host_lma, mov_ss_blocking, None, vmcs_pointer, vmcs.launch_state)


def check_changed(vmcs: Vmcs, profile: Profile, changed, memory: Memory | None = None,
                  instruction: str = "vmresume", host_lma: bool = True, mov_ss_blocking: bool = False,
                  vmcs_pointer: int | None = None, entry: Entry | None = None) -> Result:
    """check() restricted to the rules that read a field in `changed` (encodings),
    plus the rules that read no field (the basic checks) or physical memory (the
    PDPTEs, the VMCS-link-pointer region, the virtual-APIC page, the MSR-load area).

    For a VM entry with a VMCS that passed every check at the previous entry and
    has changed since only in these fields: every rule not run reads only fields
    that have not changed, so it gives the same answer as before.  The first
    failing rule in SDM order gives the outcome, as in check()."""
    violations, not_checked = _run_changed(vmcs, profile, changed, memory, instruction, host_lma,
                                           mov_ss_blocking, vmcs_pointer, entry)
    return Result.from_violations(profile.name, instruction, list(violations), list(not_checked))


def first_failure_changed(vmcs: Vmcs, profile: Profile, changed, memory: Memory | None = None,
                          instruction: str = "vmresume", host_lma: bool = True, mov_ss_blocking: bool = False,
                          vmcs_pointer: int | None = None, entry: Entry | None = None) -> Result | None:
    """check_changed() for the VM-entry hot path: None when every rule passes,
    else the failing Result."""
    violations, not_checked = _run_changed(vmcs, profile, changed, memory, instruction, host_lma,
                                           mov_ss_blocking, vmcs_pointer, entry)
    return Result.from_violations(profile.name, instruction, violations, not_checked) if violations else None


_NONE: tuple = ((), ())


def _rules_reading(key: frozenset) -> tuple:
    """(guard, fn, rule) of the rules that read a field of `key`, no field, or
    physical memory (which may have changed whatever the fields), in order."""
    names = {F.BY_ENCODING[enc].name for enc in key if enc in F.BY_ENCODING}
    return tuple((r.guard, r.fn, r) for r in _ORDERED
                 if not r.fields or r.memory or names.intersection(r.fields))


def changed_plan(changed) -> tuple:
    """(the rules check_changed runs for `changed`, a function (v, k, e) -> the
    index of the first of them that fails, or -1), cached by the set of fields:
    VM entries after exits mostly repeat a few sets."""
    key = changed if changed.__class__ is frozenset else frozenset(changed)
    got = _BY_FIELDS.get(key)
    if got is None:
        plan = _rules_reading(key)
        got = (plan, _first_failing(plan))
        if len(_BY_FIELDS) < 256:
            _BY_FIELDS[key] = got
    return got


def steady_runner(changed, v, e: Entry) -> Callable:
    """changed_plan(changed)'s runner for repeated VM entries with the same VMCS
    values `v` (a dict holding every field) and Entry `e`, between which only
    fields of `changed` change: it
    leaves out the rules that read neither a field nor memory (they read only the
    Entry: their answer stays) and the guarded rules that read none of `changed`
    and whose guard is false now (a guard reads only its rule's fields and the
    Entry: it stays false)."""
    names = {F.BY_ENCODING[enc].name for enc in changed if enc in F.BY_ENCODING}
    plan, _ = changed_plan(changed)
    return _first_failing(tuple(
        (g, fn, r) for g, fn, r in plan
        if (r.fields or r.memory) and (g is None or names.intersection(r.fields) or g(v, e))))


def _first_failing(plan: tuple) -> Callable:
    """One generated function that runs the rules of `plan` in order (each guard
    once for consecutive rules that share it) and returns the index of the first
    that fails, or -1: the VM-entry hot path without a Python loop over rules."""
    lines, scope, guard = ["def run(v, k, e):"], {}, None
    for i, (g, fn, _r) in enumerate(plan):
        scope[f"f{i}"] = fn
        if g is not guard or g is None:
            guard, indent = g, "    "
            if g is not None:
                scope[f"g{i}"] = g
                lines.append(f"    if g{i}(v, e):")
        if g is not None:
            indent = "        "
        lines.append(f"{indent}if f{i}(v, k, e) is not None: return {i}")
    lines.append("    return -1")
    exec(compile("\n".join(lines) + "\n", "<vmxlab.checks changed plan>", "exec"), scope)
    return scope["run"]


def _run_changed(vmcs, profile, changed, memory, instruction, host_lma, mov_ss_blocking, vmcs_pointer, entry):
    """(violations, not_checked) of the rules reading `changed`, stopping at the first violation."""
    plan, first_failing = changed_plan(changed)
    k = facts(profile)
    values = vmcs.values
    v = values if len(values) >= _NFIELDS else all_values(values)   # a complete dict is used as is
    if entry is not None and entry.instruction == instruction and entry.launch_state == vmcs.launch_state \
            and not mov_ss_blocking:
        e = entry
        e.memory = memory
    else:
        e = Entry(v, k, instruction, host_lma, mov_ss_blocking, memory, vmcs_pointer, vmcs.launch_state)
    i = first_failing(v, k, e)
    if i >= 0:
        _g, fn, r = plan[i]
        return [_violation(r, fn(v, k, e), v)], []
    if v[F.VM_ENTRY_MSR_LOAD_COUNT]:
        violations: list[Violation] = []
        not_checked: list[NotChecked] = []
        _msr_load(v, k, e, False, violations, not_checked)
        return violations, not_checked
    return _NONE


def _msr_load(v, k, e, all: bool, violations: list, not_checked: list) -> None:
    """'Loading MSRs': the entries of the VM-entry MSR-load area in order; the
    first entry that fails gives exit reason 34 with its 1-based index."""
    from .msr_load import entries, recommended_max
    count = v[F.VM_ENTRY_MSR_LOAD_COUNT]   # (a dump without the field: Unknown, caught by the caller)
    limit = recommended_max(k.misc)
    try:
        for i, index, high, data in entries(v, e, limit):
            for r in _MSR_RULES:
                out = r.fn(index, high, data, k, e)
                if out is not None:
                    field, value = "VM_ENTRY_MSR_LOAD_ADDR", v[F.VM_ENTRY_MSR_LOAD_ADDR] + 16 * (i - 1)
                    violations.append(Violation(r, field, value, f"entry {i}: {out}", i))
                    if not all:
                        return
    except Unknown as u:
        not_checked.extend(NotChecked(r, u.what) for r in _MSR_RULES)
        return
    if count > limit:
        why = (f"entries {limit + 1}-{count}: more than the recommended maximum of {limit} "
               "(IA32_VMX_MISC bits 27:25; the processor's behavior is undefined)")
        not_checked.extend(NotChecked(r, why) for r in _MSR_RULES)


_ORDERED: list[REG.Rule] = []
_MSR_RULES: list[REG.Rule] = []
# The execution plan: runs of consecutive rules that share a guard (a cheap test
# that, when false, means every rule of the run passes), so that the engine tests
# the guard once instead of calling each rule.  Order is the rules' order.
_PLAN: list[tuple] = []


def finalize() -> None:
    """Freeze the rule order once every rule module is imported (checks/__init__)."""
    order = {c: i for i, c in enumerate(REG.CLASS_ORDER)}
    ranked = sorted(enumerate(REG.RULES), key=lambda t: (order[t[1].klass], t[0]))
    REG.RULES[:] = [r for _, r in ranked]
    _ORDERED[:] = [r for r in REG.RULES if r.klass != REG.MSR_LOAD]
    _MSR_RULES[:] = [r for r in REG.RULES if r.klass == REG.MSR_LOAD]
    plan: list[tuple] = []
    for r in _ORDERED:
        if plan and plan[-1][0] is r.guard:
            plan[-1][1].append((r.fn, r))
        else:
            plan.append((r.guard, [(r.fn, r)]))
    _PLAN[:] = [(g, _runner([fn for fn, _ in block]), len(block), tuple(block)) for g, block in plan]


def _runner(fns: list) -> Callable:
    """One function that calls every rule of a run and returns their results as a
    tuple: the common case (every rule passes) costs one call and one
    tuple.count instead of a Python loop over the rules."""
    names = [f"f{i}" for i in range(len(fns))]
    src = f"def run(v, k, e, {', '.join(f'{n}={n}' for n in names)}):\n" \
          f"    return ({', '.join(f'{n}(v, k, e)' for n in names)},)\n"
    scope = dict(zip(names, fns))
    exec(compile(src, "<vmxlab.checks plan>", "exec"), scope)
    return scope["run"]
