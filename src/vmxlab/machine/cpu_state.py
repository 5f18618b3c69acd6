"""Whole-processor state in the shape of machine/state.py (VMCS guest-state names
plus EXTRA_KEYS), read from and written to unicorn, the context blob and the
machine's own registers.

Where each part lives:
- GPRs, RIP, RFLAGS, CR0/2/3/4, DR0-3/6/7: unicorn registers (one batch call each
  way);
- segment registers ES..GS, LDTR, TR with their hidden parts, GDTR, IDTR: the
  context blob's segment caches (access rights converted to and from QEMU's
  descriptor flags; an unusable segment is stored not present);
- CPL: SS.DPL, recomputed into hflags with QEMU's cpu_x86_load_seg_cache rules;
- interruptibility: blocking by STI / MOV SS = QEMU's HF_INHIBIT_IRQ (QEMU keeps
  one flag for both: it is reported as blocking by STI when RFLAGS.IF = 1, else
  by MOV SS); blocking by NMI = HF2_NMI (QEMU's IRET clears it);
- activity state, pending debug exceptions, CR8 (unicorn has no local APIC and
  loses MOV to CR8): machine attributes;
- IA32_EFER, SYSENTER_*, STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE: unicorn MSRs;
  IA32_DEBUGCTL, IA32_PAT, TSC_AUX: the MSR file; XCR0: the context blob.

Order of `set_state`: CR4, CR3, CR0 through unicorn (only those that change:
each write has QEMU side effects), then the blob: segments, IA32_EFER written
exactly (QEMU's WRMSR cannot change LMA, which it derives from CR0.PG writes)
with the matching HF_LMA, hflags recomputed from the final CR0 and RFLAGS;
then the PAE PDPTEs are reloaded and unicorn's (untagged) TLB is dropped; the
machine's software TLB, tagged by translation context, is kept.
"""
from __future__ import annotations

import operator

from ..arch import events as EV
from ..arch import msrs as M
from ..arch import registers as AR
from . import context_blob as CB
from . import registers as REG
from .state import KEYS, SEGMENTS, VMCS_KEYS

_SLOT = {"ES": CB.ES, "CS": CB.CS, "SS": CB.SS, "DS": CB.DS, "FS": CB.FS, "GS": CB.GS,
         "LDTR": CB.LDT, "TR": CB.TR}
_MSR_KEYS = (("GUEST_IA32_DEBUGCTL", M.IA32_DEBUGCTL), ("GUEST_SYSENTER_CS", M.IA32_SYSENTER_CS),
             ("GUEST_SYSENTER_ESP", M.IA32_SYSENTER_ESP), ("GUEST_SYSENTER_EIP", M.IA32_SYSENTER_EIP),
             ("GUEST_IA32_PAT", M.IA32_PAT), ("KERNEL_GS_BASE", M.IA32_KERNEL_GS_BASE),
             ("STAR", M.IA32_STAR), ("LSTAR", M.IA32_LSTAR), ("CSTAR", M.IA32_CSTAR),
             ("FMASK", M.IA32_FMASK), ("TSC_AUX", M.IA32_TSC_AUX))


_KEYSET = frozenset(KEYS)
_VMCS_KEYSET = frozenset(VMCS_KEYS)
# RFLAGS bits in QEMU's translation-block key (cpu_get_tb_cpu_state): IOPL, TF, RF, VM, AC
_TB_RFLAGS = AR.RFLAGS_IOPL | AR.RFLAGS_TF | AR.RFLAGS_RF | AR.RFLAGS_VM | AR.RFLAGS_AC
_M64 = (1 << 64) - 1
_GPR_KEYS = tuple({"RSP": "GUEST_RSP", "RIP": "GUEST_RIP", "RFLAGS": "GUEST_RFLAGS"}.get(n, n)
                  for n in REG.GPRS_NAMES)
_GPR_GET = operator.itemgetter(*_GPR_KEYS)
_CTRL_KEYS = ("GUEST_CR0", "CR2", "GUEST_CR3", "GUEST_CR4", "DR0", "DR1", "DR2", "DR3", "DR6", "GUEST_DR7")
# CR2, DR0-3, DR6, DR7 of a snapshot and of the control-register batch
_DEBUG_GET = operator.itemgetter("CR2", "DR0", "DR1", "DR2", "DR3", "DR6", "GUEST_DR7")
_PAGING_GET = operator.itemgetter(REG.CR0, REG.CR3, REG.CR4)
_PAGING_KEYS = operator.itemgetter("GUEST_CR0", "GUEST_CR3", "GUEST_CR4")
_RFLAGS, _NGPRS = REG.RFLAGS, len(_GPR_KEYS)
_RFLAGS_VM, _EFER_LMA = AR.RFLAGS_VM, M.EFER_LMA
_HF_LMA, _HF_INHIBIT_IRQ, _HF2_NMI = CB.HF_LMA, CB.HF_INHIBIT_IRQ, CB.HF2_NMI
_BLOCKING_STI_MOV_SS = EV.INTERRUPTIBILITY_STI | EV.INTERRUPTIBILITY_MOV_SS
_BLOCKING_NMI = EV.INTERRUPTIBILITY_NMI
_CTRL_DEBUG_GET = operator.itemgetter(REG.CR2, REG.DR0, REG.DR1, REG.DR2, REG.DR3, REG.DR6, REG.DR7)
# the cache items recompute_segment_hflags reads: ES base, CS flags, SS base and flags, DS base
_HFLAGS_INPUT = operator.itemgetter(4 * CB.ES + 1, 4 * CB.CS + 3, 4 * CB.SS + 1, 4 * CB.SS + 3, 4 * CB.DS + 1)
_SEG_KEYS = tuple((_SLOT[seg], f"GUEST_{seg}_SELECTOR", f"GUEST_{seg}_BASE", f"GUEST_{seg}_LIMIT",
                   f"GUEST_{seg}_AR_BYTES") for seg in SEGMENTS)


def _segment_items(caches: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    """The snapshot's segment, GDTR and IDTR items from the blob's ten caches."""
    out = []
    for slot, ksel, kbase, klimit, kar in _SEG_KEYS:
        sel, base, limit, flags = caches[4 * slot:4 * slot + 4]
        ar = (flags >> 8) & 0xF0FF
        if not flags & CB.DESC_P:
            if slot != CB.CS:
                ar |= 0x10000
        elif slot == CB.TR and ar & 0x1F in (1, 9):
            ar |= 2        # QEMU caches the pre-LTR type; a loaded TR is busy ("LTR")
        out += ((ksel, sel), (kbase, base), (klimit, limit), (kar, ar))
    out += (("GUEST_GDTR_BASE", caches[4 * CB.GDT + 1]), ("GUEST_GDTR_LIMIT", caches[4 * CB.GDT + 2]),
            ("GUEST_IDTR_BASE", caches[4 * CB.IDT + 1]), ("GUEST_IDTR_LIMIT", caches[4 * CB.IDT + 2]))
    return tuple(out)


def _cache_values(s: dict[str, int]) -> tuple[int, ...]:
    """The blob's ten caches (flat, as ContextBlob.caches returns them) from a snapshot."""
    caches = [0] * 40
    for slot, ksel, kbase, klimit, kar in _SEG_KEYS:
        ar = s[kar]
        flags = (ar & 0xF0FF) << 8
        if ar & 0x10000:
            flags &= ~CB.DESC_P
        caches[4 * slot:4 * slot + 4] = (s[ksel] & 0xFFFF, s[kbase] & _M64, s[klimit] & 0xFFFFFFFF, flags)
    caches[4 * CB.GDT + 1:4 * CB.GDT + 3] = (s["GUEST_GDTR_BASE"] & _M64, s["GUEST_GDTR_LIMIT"] & 0xFFFFFFFF)
    caches[4 * CB.IDT + 1:4 * CB.IDT + 3] = (s["GUEST_IDTR_BASE"] & _M64, s["GUEST_IDTR_LIMIT"] & 0xFFFFFFFF)
    return tuple(caches)


# The conversions above, memoized: a VMX guest and its host switch between a few
# segment states over and over (pure functions of their input; bounded caches).
_SEG_MEMO: dict[tuple, tuple] = {}
_CACHE_MEMO: dict[tuple, tuple] = {}
_SEG_INPUT_KEYS = tuple(k for _slot, *keys in _SEG_KEYS for k in keys) + (
    "GUEST_GDTR_BASE", "GUEST_GDTR_LIMIT", "GUEST_IDTR_BASE", "GUEST_IDTR_LIMIT")
_SEG_INPUT = operator.itemgetter(*_SEG_INPUT_KEYS)


def _memo(memo: dict, key, make):
    """memo[key], made by make() once (at most 64 kept: guest and host alternate
    between a few)."""
    value = memo.get(key)
    if value is None:
        if len(memo) > 64:
            memo.clear()
        value = memo[key] = make()
    return value


_DEBUG_MEMO: dict[tuple, tuple] = {}


def _debug_values(raw: tuple[int, ...]) -> tuple[int, ...]:
    """CR2, DR0-3, DR6, DR7 of a snapshot as the registers hold them (DR6/DR7 fixed bits)."""
    value = _DEBUG_MEMO.get(raw)
    if value is None:
        if len(_DEBUG_MEMO) > 64:
            _DEBUG_MEMO.clear()
        value = _DEBUG_MEMO[raw] = (*raw[:5], raw[5] | 0xFFFF0FF0, (raw[6] | 0x400) & ~0xD000)
    return value


def _segments_of(caches: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    return _memo(_SEG_MEMO, caches, lambda: _segment_items(caches))


def _caches_of(s: dict[str, int]) -> tuple[int, ...]:
    return _memo(_CACHE_MEMO, _SEG_INPUT(s), lambda: _cache_values(s))


class StateAccess:
    """Mixin of Machine: get_state / set_state."""

    def get_state(self) -> dict[str, int]:
        """A full snapshot: every key of state.KEYS."""
        g = self.gprs.read()
        c = self.ctrl.read()
        blob = self.blob.load()
        s: dict[str, int] = dict(zip(_GPR_KEYS, g[:]))     # (a slice: one C call, not one a register)
        if self._stepping and not self._guest_tf:
            s["GUEST_RFLAGS"] &= ~AR.RFLAGS_TF
        s.update(zip(_CTRL_KEYS, c[:]))
        s["CR8"] = self.cr8
        s.update(_segments_of(blob.caches()))
        intr = 0
        if blob.hflags & CB.HF_INHIBIT_IRQ:
            intr |= EV.INTERRUPTIBILITY_STI if s["GUEST_RFLAGS"] & AR.RFLAGS_IF else EV.INTERRUPTIBILITY_MOV_SS
        if blob.hflags2 & CB.HF2_NMI:
            intr |= EV.INTERRUPTIBILITY_NMI
        s["GUEST_INTERRUPTIBILITY_INFO"] = intr
        s["GUEST_ACTIVITY_STATE"] = self.activity
        s["GUEST_PENDING_DBG_EXCEPTIONS"] = self.pending_debug
        s["XCR0"] = blob.xcr0
        s["GUEST_IA32_EFER"] = self._efer
        io = self._state_io()
        s.update(zip(io.uc_keys, io.batch.read()))
        s.update(zip(io.py_keys, map(self.msrs.values.get, io.py_indices, io.py_zeros)))
        s.update(io.absent_items)
        return s

    def _state_io(self) -> "_StateIO":
        io = self.__dict__.get("_stateio")
        if io is None:
            io = self._stateio = _StateIO(self)
        return io

    def set_state(self, s: dict[str, int]) -> None:
        """Load a snapshot: every key of state.KEYS, or any subset (the other
        registers keep their values, as with the KVM backend's set_state).

        Values are loaded as given: this is the processor's state, not an
        instruction; consistency is the caller's business (VM entry checks it
        first).  The only adjustments are the ones the hardware registers
        themselves make: RFLAGS bit 1 reads 1, DR6/DR7 fixed bits.  Cached
        translations are not invalidated (call flush_tlb() for that), except
        unicorn's own TLB, which has no address-space tags."""
        if not _KEYSET.issuperset(s):
            unknown = [k for k in s if k not in _KEYSET]
            raise KeyError(f"not processor-state keys: {', '.join(sorted(unknown)[:5])}")
        if len(s) != len(_KEYSET):
            full = self.get_state()
            full.update(s)
            s = full
        self._set_state(s)

    def set_state_over(self, s: dict[str, int], old: dict[str, int]) -> None:
        """set_state(s) of a full snapshot when `old` is the get_state() just taken
        (nothing run, written or read since; its RIP may differ): the unicorn MSRs are
        written only when they differ from `old`, and the register batches that
        get_state read are not read again.  The other register groups are compared
        with the live values as set_state does.  VM exit uses it: host and guest
        often share these MSRs."""
        if len(s) != len(_KEYSET) or len(old) != len(_KEYSET) or not _KEYSET.issuperset(s):
            self.set_state(s)
            return
        self._set_state(s, old, fresh=True)

    def set_vmcs_state(self, s: dict[str, int]) -> None:
        """set_state of a snapshot of exactly the VMCS_KEYS (what VM entry loads): the
        EXTRA_KEYS registers keep their live values, read without the segment
        conversions of a full get_state()."""
        if len(s) != len(VMCS_KEYS) or not _VMCS_KEYSET.issuperset(s):
            self.set_state(s)
            return
        io = self._state_io()
        g = self.gprs.read()
        full = dict(zip(_GPR_KEYS, g[:]))
        if self._stepping and not self._guest_tf:
            full["GUEST_RFLAGS"] &= ~AR.RFLAGS_TF
        full.update(zip(_CTRL_KEYS, self.ctrl.read()[:]))
        full["CR8"] = self.cr8
        full["XCR0"] = self.blob.load().xcr0
        live = dict(zip(io.uc_keys, io.batch.read()))
        full.update(live)
        full.update(zip(io.py_keys, map(self.msrs.values.get, io.py_indices, io.py_zeros)))
        full.update(io.absent_items)
        full.update(s)
        self._set_state(full, live, fresh=True)

    def _set_state(self, s: dict[str, int], old: dict[str, int] | None = None, fresh: bool = False) -> None:
        # Each group is written only when it changes: every write into unicorn costs,
        # and some have side effects (a CR3 write flushes QEMU's TLB).
        # `fresh`: the register batches hold the live values (read since anything was
        # written or run), as a get_state() just before leaves them.
        if self._stepping:
            fresh = False
            self._end_stepping()
        io = self._state_io()
        c = self.ctrl.values if fresh else self.ctrl.read()
        efer = s["GUEST_IA32_EFER"]
        paging = _PAGING_KEYS(s)                 # (CR0, CR3, CR4)
        cr0 = paging[0]
        # unicorn's TLB has no address-space tags: drop it when the translation context
        # (CR0, CR3, CR4, EFER) changes, not on every load (VM exit and entry between a
        # host and guest that share their paging keep it)
        paging_changed = _PAGING_GET(c) != paging or self._efer != efer
        if paging_changed:
            cr0, cr3, cr4 = paging
            if c[REG.CR4] != cr4:
                io.write_reg(REG.X.UC_X86_REG_CR4, cr4)
            if c[REG.CR3] != cr3:
                io.write_reg(REG.X.UC_X86_REG_CR3, cr3)
            if c[REG.CR0] != cr0:
                io.write_reg(REG.X.UC_X86_REG_CR0, cr0)
            c = self.ctrl.read()
        self._efer = efer                  # written exactly into the blob below
        debug = _debug_values(_DEBUG_GET(s))
        if paging_changed or _CTRL_DEBUG_GET(c) != debug:
            c[REG.CR2], c[REG.DR0], c[REG.DR1], c[REG.DR2], c[REG.DR3], c[REG.DR6], c[REG.DR7] = debug
            self.ctrl.write()
        g = self.gprs.values if fresh else self.gprs.read()
        g_vm = g[_RFLAGS]
        new = list(_GPR_GET(s))
        rflags = new[_RFLAGS] = new[_RFLAGS] | 2
        g[:_NGPRS] = new
        self.gprs.write()
        if io.uc_get is not None:
            msrs = io.uc_get(s)
            if old is None or msrs != io.uc_get(old):
                io.batch.write(msrs)
        if io.py_msrs:
            values = self.msrs.values
            values.update(zip(io.py_indices, io.py_get(s)))
            if io.tsc_aux:
                values[M.IA32_TSC_AUX] &= 0xFFFFFFFF
        blob = self.blob.load()          # (after the writes above: storing it restores every register)
        old_hflags, old_hflags2 = blob.flags()
        caches = _caches_of(s)
        live = blob.caches()
        segments_changed = live != caches
        if segments_changed:
            blob.set_caches(caches)
        blob_efer = blob.efer
        # the hflags QEMU derives from segments (CS and SS flags, ES/SS/DS bases), CR0,
        # RFLAGS.VM and EFER.LMA: recomputed when one of them changes (QEMU keeps them
        # current itself otherwise)
        if paging_changed or (g_vm ^ rflags) & _RFLAGS_VM or blob_efer != efer \
                or (old_hflags & _HF_LMA) != (_HF_LMA if efer & _EFER_LMA else 0) \
                or (segments_changed and _HFLAGS_INPUT(live) != _HFLAGS_INPUT(caches)):
            blob.set_efer(efer)
            blob_efer = efer
            blob.recompute_segment_hflags(cr0, rflags)
            hf = blob.hflags & ~_HF_INHIBIT_IRQ
        else:
            hf = old_hflags & ~_HF_INHIBIT_IRQ
        intr = s["GUEST_INTERRUPTIBILITY_INFO"]
        self.shadow_writes += 1
        if intr & _BLOCKING_STI_MOV_SS:
            hf |= _HF_INHIBIT_IRQ
        hf2 = old_hflags2 & ~_HF2_NMI
        if intr & _BLOCKING_NMI:
            hf2 |= _HF2_NMI
        xcr0 = s["XCR0"]
        # the blob is stored back only when something in it changes (QEMU clears no
        # exception-in-flight marker itself: the interrupt hook and event delivery do)
        if segments_changed or hf != old_hflags or hf2 != old_hflags2 or blob.xcr0 != xcr0 \
                or blob_efer != efer or blob.old_exception != -1:
            blob.set_flags(hf, hf2)
            blob.xcr0 = xcr0
            blob.clear_exception_in_flight()
            blob.store()
        self.cr8 = s["CR8"] & 0xF
        self.activity = s["GUEST_ACTIVITY_STATE"]
        self.pending_debug = s["GUEST_PENDING_DBG_EXCEPTIONS"]
        # a mode change (hflags: CPL, CS.L/D, ...; the RFLAGS bits QEMU keys translated
        # code with) drops unicorn's TLB too, which also empties QEMU's jump cache:
        # translated code of the old mode must not be reused (a test switches CS.L)
        self._state_changed(paging_changed or hf != old_hflags or (rflags ^ g_vm) & _TB_RFLAGS)

    # -- pieces used by other parts of the machine ------------------------------------------
    def cpl(self) -> int:
        """Current privilege level: SS.DPL as QEMU keeps it in hflags."""
        return self.blob.load().hflags & CB.HF_CPL_MASK

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, VMCS access rights) of ES..GS, LDTR or TR."""
        sel, base, limit, flags = self.blob.load().cache(_SLOT[name])
        return sel, base, limit, CB.flags_to_ar(flags)


def _getter(keys: list[str]):
    """The values of `keys` in a snapshot, as a tuple (operator.itemgetter for any count)."""
    if len(keys) == 1:
        return lambda s, k=keys[0]: (s[k],)
    return operator.itemgetter(*keys) if keys else (lambda s: ())


class _StateIO:
    """Precomputed pieces of get_state/set_state for one machine: which state MSRs
    exist, one MsrBatch for those unicorn holds, a raw single-register writer."""

    def __init__(self, m):
        from . import unicorn_ffi as ffi
        from .msr_file import UNICORN_BACKED
        present = [(k, i) for k, i in _MSR_KEYS if m.msrs.exists(i)]
        self.absent = [k for k, i in _MSR_KEYS if not m.msrs.exists(i)]
        uc = [(k, i) for k, i in present if i in UNICORN_BACKED]
        self.py_msrs = [(k, i) for k, i in present if i not in UNICORN_BACKED]
        self.py_indices = [i for _, i in self.py_msrs]
        self.py_keys = [k for k, _ in self.py_msrs]
        self.py_zeros = [0] * len(self.py_msrs)
        self.absent_items = tuple((k, 0) for k in self.absent)
        self.py_get = _getter([k for k, _ in self.py_msrs])
        self.tsc_aux = M.IA32_TSC_AUX in self.py_indices
        self.uc_keys = [k for k, _ in uc]
        # their values in a snapshot, as a tuple (None: no unicorn MSR)
        self.uc_get = _getter(self.uc_keys) if uc else None
        self.batch = ffi.MsrBatch(m.engine.handle, [i for _, i in uc])
        self._engine = m.engine

    def write_reg(self, reg: int, value: int) -> None:
        self._engine.reg_write(reg, value)
