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

Order of `set_state` (SDM "Loading Guest State" has the same concerns): CR4 and
CR3 before CR0 (QEMU enters IA-32e mode when CR0.PG is set with EFER.LME),
IA32_EFER last among the control registers (its LMA is then exactly the
snapshot's), then the blob (segments and hflags recomputed from the final CR0
and RFLAGS), then the PAE PDPTEs are reloaded and every TLB entry dropped.
"""
from __future__ import annotations

from ..arch import events as EV
from ..arch import msrs as M
from ..arch import registers as AR
from . import context_blob as CB
from . import registers as REG
from .state import KEYS, SEGMENTS

_SLOT = {"ES": CB.ES, "CS": CB.CS, "SS": CB.SS, "DS": CB.DS, "FS": CB.FS, "GS": CB.GS,
         "LDTR": CB.LDT, "TR": CB.TR}
_MSR_KEYS = (("GUEST_IA32_DEBUGCTL", M.IA32_DEBUGCTL), ("GUEST_SYSENTER_CS", M.IA32_SYSENTER_CS),
             ("GUEST_SYSENTER_ESP", M.IA32_SYSENTER_ESP), ("GUEST_SYSENTER_EIP", M.IA32_SYSENTER_EIP),
             ("GUEST_IA32_PAT", M.IA32_PAT), ("KERNEL_GS_BASE", M.IA32_KERNEL_GS_BASE),
             ("STAR", M.IA32_STAR), ("LSTAR", M.IA32_LSTAR), ("CSTAR", M.IA32_CSTAR),
             ("FMASK", M.IA32_FMASK), ("TSC_AUX", M.IA32_TSC_AUX))


class StateAccess:
    """Mixin of Machine: get_state / set_state."""

    def get_state(self) -> dict[str, int]:
        """A full snapshot: every key of state.KEYS."""
        g = self.gprs.read()
        c = self.ctrl.read()
        blob = self.blob.load()
        s: dict[str, int] = {}
        for i, name in enumerate(REG.GPRS_NAMES):
            s[name] = g[i]
        s["GUEST_RSP"] = s.pop("RSP")
        s["GUEST_RIP"] = s.pop("RIP")
        s["GUEST_RFLAGS"] = s.pop("RFLAGS")
        if self._stepping and not self._guest_tf:
            s["GUEST_RFLAGS"] &= ~AR.RFLAGS_TF
        s["GUEST_CR0"], s["CR2"], s["GUEST_CR3"], s["GUEST_CR4"] = c[REG.CR0], c[REG.CR2], c[REG.CR3], c[REG.CR4]
        s["DR0"], s["DR1"], s["DR2"], s["DR3"] = c[REG.DR0], c[REG.DR1], c[REG.DR2], c[REG.DR3]
        s["DR6"], s["GUEST_DR7"] = c[REG.DR6], c[REG.DR7]
        s["CR8"] = self.cr8
        for seg in SEGMENTS:
            sel, base, limit, flags = blob.cache(_SLOT[seg])
            ar = CB.flags_to_ar(flags)
            if seg == "CS":
                ar &= ~0x10000
            elif seg == "TR" and ar & 0x1F in (1, 9):
                ar |= 2        # QEMU caches the pre-LTR type; a loaded TR is busy ("LTR")
            s[f"GUEST_{seg}_SELECTOR"] = sel
            s[f"GUEST_{seg}_BASE"] = base
            s[f"GUEST_{seg}_LIMIT"] = limit
            s[f"GUEST_{seg}_AR_BYTES"] = ar
        _s, s["GUEST_GDTR_BASE"], s["GUEST_GDTR_LIMIT"], _f = blob.cache(CB.GDT)
        _s, s["GUEST_IDTR_BASE"], s["GUEST_IDTR_LIMIT"], _f = blob.cache(CB.IDT)
        hf = blob.hflags
        intr = 0
        if hf & CB.HF_INHIBIT_IRQ:
            intr |= EV.INTERRUPTIBILITY_STI if s["GUEST_RFLAGS"] & AR.RFLAGS_IF else EV.INTERRUPTIBILITY_MOV_SS
        if blob.hflags2 & CB.HF2_NMI:
            intr |= EV.INTERRUPTIBILITY_NMI
        s["GUEST_INTERRUPTIBILITY_INFO"] = intr
        s["GUEST_ACTIVITY_STATE"] = self.activity
        s["GUEST_PENDING_DBG_EXCEPTIONS"] = self.pending_debug
        s["XCR0"] = blob.xcr0
        s["GUEST_IA32_EFER"] = self._efer
        for key, index in _MSR_KEYS:
            s[key] = self.msrs.peek(index) if self.msrs.exists(index) else 0
        return {k: s[k] for k in KEYS}

    def set_state(self, s: dict[str, int]) -> None:
        """Load a snapshot (every key of state.KEYS must be present).

        Values are loaded as given: this is the processor's state, not an
        instruction; consistency is the caller's business (VM entry checks it
        first).  The only adjustments are the ones the hardware registers
        themselves make: RFLAGS bit 1 reads 1, DR6/DR7 fixed bits."""
        missing = [k for k in KEYS if k not in s]
        if missing:
            raise KeyError(f"state lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self._end_stepping()
        self.engine.reg_write(REG.X.UC_X86_REG_CR4, s["GUEST_CR4"])
        self.engine.reg_write(REG.X.UC_X86_REG_CR3, s["GUEST_CR3"])
        self.engine.reg_write(REG.X.UC_X86_REG_CR0, s["GUEST_CR0"])
        self.engine.msr_write(M.IA32_EFER, s["GUEST_IA32_EFER"])
        self._efer = s["GUEST_IA32_EFER"]
        c = self.ctrl.values
        self.ctrl.read()
        c[REG.CR2] = s["CR2"]
        c[REG.DR0], c[REG.DR1], c[REG.DR2], c[REG.DR3] = s["DR0"], s["DR1"], s["DR2"], s["DR3"]
        c[REG.DR6] = s["DR6"] | 0xFFFF0FF0 & 0xFFFFFFFF
        c[REG.DR7] = (s["GUEST_DR7"] | 0x400) & ~0xD000
        self.ctrl.write()
        g = self.gprs.values
        for i, name in enumerate(REG.GPRS_NAMES):
            key = {"RSP": "GUEST_RSP", "RIP": "GUEST_RIP", "RFLAGS": "GUEST_RFLAGS"}.get(name, name)
            g[i] = s[key]
        g[REG.RFLAGS] |= 2
        self.gprs.write()
        for key, index in _MSR_KEYS:
            if self.msrs.exists(index):
                self.msrs.poke(index, s[key])
        blob = self.blob.load()
        for seg in SEGMENTS:
            ar = s[f"GUEST_{seg}_AR_BYTES"]
            blob.set_cache(_SLOT[seg], s[f"GUEST_{seg}_SELECTOR"], s[f"GUEST_{seg}_BASE"],
                           s[f"GUEST_{seg}_LIMIT"], CB.ar_to_flags(ar))
        blob.set_cache(CB.GDT, 0, s["GUEST_GDTR_BASE"], s["GUEST_GDTR_LIMIT"], 0)
        blob.set_cache(CB.IDT, 0, s["GUEST_IDTR_BASE"], s["GUEST_IDTR_LIMIT"], 0)
        blob.recompute_segment_hflags(s["GUEST_CR0"], g[REG.RFLAGS])
        intr = s["GUEST_INTERRUPTIBILITY_INFO"]
        hf = blob.hflags & ~CB.HF_INHIBIT_IRQ
        if intr & (EV.INTERRUPTIBILITY_STI | EV.INTERRUPTIBILITY_MOV_SS):
            hf |= CB.HF_INHIBIT_IRQ
        blob.hflags = hf
        hf2 = blob.hflags2 & ~CB.HF2_NMI
        if intr & EV.INTERRUPTIBILITY_NMI:
            hf2 |= CB.HF2_NMI
        blob.hflags2 = hf2
        blob.xcr0 = s["XCR0"]
        blob.clear_exception_in_flight()
        blob.store()
        self.cr8 = s["CR8"] & 0xF
        self.activity = s["GUEST_ACTIVITY_STATE"]
        self.pending_debug = s["GUEST_PENDING_DBG_EXCEPTIONS"]
        self._state_changed()

    # -- pieces used by other parts of the machine ------------------------------------------
    def cpl(self) -> int:
        """Current privilege level: SS.DPL as QEMU keeps it in hflags."""
        return self.blob.load().hflags & CB.HF_CPL_MASK

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, VMCS access rights) of ES..GS, LDTR or TR."""
        sel, base, limit, flags = self.blob.load().cache(_SLOT[name])
        return sel, base, limit, CB.flags_to_ar(flags)
