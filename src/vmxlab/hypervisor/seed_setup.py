"""The seed's VMCS setup, step by step, in the seed's order (../shared/seed).

Every value is read from the live processor the way the driver reads it
(hypervisor.processor: SGDT, SIDT, STR, SLDT, RDMSR, MOV from CRn, PUSHFQ, loads
from the GDT), computed as the seed computes it and written with VMWRITE; every
write is recorded with its step, its source and the seed's line, so that the
setup can be shown as a table.

Two modes:
- fixed (default): the seed's mistakes corrected, each a named deviation (D1-D5
  below), plus the fields the seed leaves out of the shown code (EPT pointer, VPID);
- literal (`literal=True`): the seed exactly as written, mistakes included.

Deviations of the fixed mode:
- D1 HOST_CR4 is written with the adjusted CR4 (the seed's CR4 block ends in
  `vmwrite HOST_CR3, rbx`: HOST_CR3 gets the CR4 value, HOST_CR4 stays 0);
- D2 PIN_BASED_VM_EXEC_CONTROL is adjusted through the capability MSR (the seed
  writes 0: the default1 bits 1, 2, 4 must be 1 on every part);
- D3 EPT_POINTER (an identity EPT) and VIRTUAL_PROCESSOR_ID (1) are written (the
  seed enables EPT and VPID but never writes them);
- D4 host selectors are masked with `& ~7` (the seed's `and eax, 0f8h` also
  clears bits 15:8);
- D5 the TRUE capability MSRs are read only when IA32_VMX_BASIC bit 55 says they
  exist (the seed reads them unconditionally: #GP on processors without them).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import controls as C
from ..arch import fields as F
from ..arch import msrs as M
from ..arch.segments import decode_descriptor, is_null
from ..vmx.cpu import VmxFail
from .processor import Processor
from .seed import SEED_CONTROLS

STEPS = {
    1: "VMCS areas (no writes)",
    2: "Host selectors from the segment registers (RPL, TI cleared); TR from STR",
    3: "HOST_EFER from IA32_EFER",
    4: "HOST_CR0, HOST_CR3, HOST_CR4 through the CR0/CR4 fixed MSRs",
    5: "HOST_TR_BASE from the TSS descriptor; FS/GS bases from MSRs; GDTR/IDTR bases",
    6: "VMCS link pointer all ones; exception bitmap 0",
    7: "Guest segments from the GDT (FillGuestSelectorData); guest FS/GS bases from MSRs",
    8: "Primary processor-based controls through IA32_VMX_TRUE_PROCBASED_CTLS",
    9: "Secondary controls through IA32_VMX_PROCBASED_CTLS2",
    10: "Pin-based controls",
    11: "VM-exit controls through IA32_VMX_TRUE_EXIT_CTLS",
    12: "VM-entry controls through IA32_VMX_TRUE_ENTRY_CTLS",
    13: "Guest EFER, CR0, CR4 (fixed bits), CR3, DR7, GDTR/IDTR, RFLAGS",
    14: "MSR bitmap (all zero: no MSR exits)",
    15: "Guest RSP and RIP (the resume point)",
    16: "Host RSP (the hypervisor's own stack) and RIP (the exit handler)",
}

DEVIATIONS = {
    "D1": "HOST_CR4 written (the seed writes the CR4 value into HOST_CR3)",
    "D2": "pin-based controls adjusted through the capability MSR (the seed writes 0)",
    "D3": "EPT pointer and VPID written (the seed enables EPT and VPID without them)",
    "D4": "host selectors masked with & ~7 (the seed's & 0F8h truncates selectors >= 100H)",
    "D5": "TRUE capability MSRs read only when IA32_VMX_BASIC bit 55 is set",
}


@dataclass
class Write:
    step: int
    field: str
    value: int
    source: str
    seed: str                  # the seed's line(s) for this write
    deviation: str = ""        # D1..D5 in the fixed mode
    failed: str = ""           # "VMWRITE failed: ..." when the instruction failed


@dataclass
class Environment:
    """What the hypervisor brings: memory it allocated and where its pieces live."""
    msr_bitmap: int
    host_stack_top: int
    host_rip: int
    guest_rip: int
    guest_rsp: int
    eptp: int = 0
    vpid: int = 1


class SeedSetup:
    def __init__(self, cpu, processor: Processor, env: Environment, literal: bool = False):
        self.cpu = cpu
        self.p = processor
        self.env = env
        self.literal = literal
        self.writes: list[Write] = []
        self.adjustments: list[tuple[str, int, int, str]] = []   # field, wanted, value, msr read

    # -- recording ------------------------------------------------------------------------------
    def write(self, step: int, field: str, value: int, source: str, seed: str, deviation: str = "") -> None:
        """VMWRITE and record it.  Like the seed, a failing VMWRITE (VMfailValid 12 for
        a field this processor does not have) is recorded and the setup goes on."""
        f = F.by_name(field)
        try:
            self.cpu.vmwrite(field, value)
            failed = ""
        except VmxFail as e:
            failed = f"VMWRITE failed: {e}"
        self.writes.append(Write(step, f.name, value & f.mask, source, seed, deviation, failed))

    def rdmsr(self, index: int) -> int:
        return self.p.rdmsr(index)

    # -- the seed's computations --------------------------------------------------------------
    def fixed(self, value: int, fixed0_msr: int) -> int:
        """(CRn & FIXED1) | FIXED0, as the seed computes it."""
        return (value & self.rdmsr(fixed0_msr + 1)) | self.rdmsr(fixed0_msr)

    def control_msr(self, true_index: int, plain_index: int) -> tuple[int, str]:
        """The capability MSR the seed reads: TRUE always (literal), TRUE only when
        IA32_VMX_BASIC bit 55 says it exists (fixed, D5)."""
        if self.literal or self.rdmsr(M.IA32_VMX_BASIC) >> 55 & 1:
            index = true_index
        else:
            index = plain_index
        return self.rdmsr(index), M.name_of(index)

    def d5(self, msr: str, *others: str) -> str:
        """The deviation marks of a write whose control was adjusted through `msr`:
        D5 where the fixed mode read the plain capability MSR instead of the TRUE one."""
        marks = [*others]
        if not self.literal and "TRUE" not in msr:
            marks.append("D5")
        return ", ".join(marks)

    def adjust(self, field: str, wanted: int, true_index: int, plain_index: int | None = None) -> tuple[int, str]:
        if plain_index is None:
            value, name = self.rdmsr(true_index), M.name_of(true_index)
        else:
            value, name = self.control_msr(true_index, plain_index)
        adjusted = (wanted | (value & 0xFFFFFFFF)) & (value >> 32)
        self.adjustments.append((field, wanted, adjusted, name))
        return adjusted, name

    # -- the steps ---------------------------------------------------------------------------------
    def run(self) -> list[Write]:
        for step in range(2, 17):
            getattr(self, f"step{step}")()
        return self.writes

    def step2(self) -> None:
        mask, dev = (0xF8, "") if self.literal else (0xFFF8, "D4")
        for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
            sel = self.p.selector(seg)
            self.write(2, f"HOST_{seg}_SELECTOR", sel & mask, f"MOV AX, {seg} = {sel:#06x}, & {mask:#x}",
                       f"invoke vmx_vmwrite_seg,HOST_{seg}_SELECTOR,{seg}  (and eax,0f8h)", dev)
        tr = self.p.selector("TR")
        self.write(2, "HOST_TR_SELECTOR", tr & mask, f"STR = {tr:#06x}, & {mask:#x}",
                   "str rax / invoke vmx_vmwrite_seg,HOST_TR_SELECTOR,RAX", dev)

    def step3(self) -> None:
        efer = self.rdmsr(M.IA32_EFER)
        self.write(3, "HOST_IA32_EFER", efer, "RDMSR IA32_EFER", "rdmsr / invoke vmx_vmwrite,HOST_EFER,rbx")

    def step4(self) -> None:
        cr0 = self.fixed(self.p.read_cr(0), M.IA32_VMX_CR0_FIXED0)
        self.write(4, "HOST_CR0", cr0, "(CR0 & CR0_FIXED1) | CR0_FIXED0", "vmwrite,HOST_CR0, rbx")
        self.write(4, "HOST_CR3", self.p.read_cr(3), "MOV from CR3", "vmwrite,HOST_CR3, cr3")
        cr4 = self.fixed(self.p.read_cr(4), M.IA32_VMX_CR4_FIXED0)
        if self.literal:
            self.write(4, "HOST_CR3", cr4, "(CR4 & CR4_FIXED1) | CR4_FIXED0 -- written to HOST_CR3",
                       "vmwrite,HOST_CR3, rbx   (should be HOST_CR4)")
        else:
            self.write(4, "HOST_CR4", cr4, "(CR4 & CR4_FIXED1) | CR4_FIXED0", "vmwrite,HOST_CR3, rbx", "D1")

    def step5(self) -> None:
        gdt_limit, gdt_base = self.p.descriptor_table("sgdt")
        tr = self.p.selector("TR")
        lo, hi = self.p.read_qwords(gdt_base + (tr & 0xFFF8), 2)
        base, _limit, _ar = decode_descriptor(lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
        self.write(5, "HOST_TR_BASE", base, f"TSS descriptor at GDT + {tr & 0xFFF8:#x}",
                   "invoke GetSegmentDescriptor / vmwrite,HOST_TR_BASE")
        self.write(5, "HOST_FS_BASE", self.rdmsr(M.IA32_FS_BASE), "RDMSR IA32_FS_BASE", "vmwrite,HOST_FS_BASE,rax")
        self.write(5, "HOST_GS_BASE", self.rdmsr(M.IA32_GS_BASE), "RDMSR IA32_GS_BASE", "vmwrite,HOST_GS_BASE, rax")
        self.write(5, "HOST_GDTR_BASE", gdt_base, "SGDT", "vmwrite,HOST_GDTR_BASE,rbx")
        _l, idt_base = self.p.descriptor_table("sidt")
        self.write(5, "HOST_IDTR_BASE", idt_base, "SIDT", "vmwrite,HOST_IDTR_BASE,rbx")

    def step6(self) -> None:
        self.write(6, "VMCS_LINK_POINTER", (1 << 64) - 1, "all ones (no shadow VMCS)", "vmwrite,VMCS_LINK_POINTER,-1")
        self.write(6, "EXCEPTION_BITMAP", 0, "no exception exits", "vmwrite,EXCEPTION_BITMAP,0")

    def step7(self) -> None:
        _limit, gdt_base = self.p.descriptor_table("sgdt")
        seed = {"ES": 0, "CS": 1, "SS": 2, "DS": 3, "FS": 4, "GS": 5, "LDTR": 6, "TR": 7}
        for seg, n in seed.items():
            sel = self.p.selector(seg)
            line = f"invoke FillGuestSelectorData,rbx,{n},{seg.lower() if n < 6 else 'rax'}"
            if is_null(sel) and not sel & 4:
                base = limit = 0
                ar = 0x10000                           # a null selector: unusable
            else:
                lo, hi = self.p.read_qwords(gdt_base + (sel & 0xFFF8), 2)
                base, limit, ar = decode_descriptor(lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
            src = f"selector {sel:#06x}" + (": null, unusable" if ar == 0x10000 else f": GDT descriptor")
            self.write(7, f"GUEST_{seg}_SELECTOR", sel, src, line)
            self.write(7, f"GUEST_{seg}_LIMIT", limit, src, line)
            self.write(7, f"GUEST_{seg}_AR_BYTES", ar, src, line)
            self.write(7, f"GUEST_{seg}_BASE", base, src, line)
        self.write(7, "GUEST_FS_BASE", self.rdmsr(M.IA32_FS_BASE), "RDMSR IA32_FS_BASE", "vmwrite,GUEST_FS_BASE,rax")
        self.write(7, "GUEST_GS_BASE", self.rdmsr(M.IA32_GS_BASE), "RDMSR IA32_GS_BASE", "vmwrite,GUEST_GS_BASE,rax")

    def step8(self) -> None:
        field = "CPU_BASED_VM_EXEC_CONTROL"
        value, msr = self.adjust(field, SEED_CONTROLS[field], M.IA32_VMX_TRUE_PROCBASED_CTLS,
                                 M.IA32_VMX_PROCBASED_CTLS)
        self.write(8, field, value, f"use MSR bitmaps | activate secondary, through {msr}",
                   "or ecx,eax / and ecx,edx / vmwrite,CPU_BASED_VM_EXEC_CONTROL,rcx", self.d5(msr))

    def step9(self) -> None:
        field = "SECONDARY_VM_EXEC_CONTROL"
        value, msr = self.adjust(field, SEED_CONTROLS[field], M.IA32_VMX_PROCBASED_CTLS2)
        self.write(9, field, value, f"RDTSCP | INVPCID | XSAVES | EPT | VPID, through {msr}",
                   "or rcx,CPU_BASED_CTL2_... / vmwrite,SECONDARY_VM_EXEC_CONTROL,rcx")
        if not self.literal:
            if value & C.SECONDARY_EXEC_ENABLE_EPT:
                self.write(9, "EPT_POINTER", self.env.eptp, "identity EPT, write-back, 4 levels",
                           "(not in the seed)", "D3")
            if value & C.SECONDARY_EXEC_ENABLE_VPID:
                self.write(9, "VIRTUAL_PROCESSOR_ID", self.env.vpid, "VPID 1", "(not in the seed)", "D3")

    def step10(self) -> None:
        field = "PIN_BASED_VM_EXEC_CONTROL"
        if self.literal:
            self.write(10, field, 0, "0, not adjusted", "vmwrite,PIN_BASED_VM_EXEC_CONTROL,0")
            return
        value, msr = self.adjust(field, 0, M.IA32_VMX_TRUE_PINBASED_CTLS, M.IA32_VMX_PINBASED_CTLS)
        self.write(10, field, value, f"0 through {msr}", "vmwrite,PIN_BASED_VM_EXEC_CONTROL,0", self.d5(msr, "D2"))

    def step11(self) -> None:
        field = "VM_EXIT_CONTROLS"
        for _ in range(2 if self.literal else 1):           # the seed writes this block twice
            value, msr = self.adjust(field, SEED_CONTROLS[field], M.IA32_VMX_TRUE_EXIT_CTLS, M.IA32_VMX_EXIT_CTLS)
            self.write(11, field, value, f"host address-space size | acknowledge interrupt on exit, through {msr}",
                       "and ecx,edx / or ecx,eax / vmwrite,VM_EXIT_CONTROLS,rcx", self.d5(msr))

    def step12(self) -> None:
        field = "VM_ENTRY_CONTROLS"
        value, msr = self.adjust(field, SEED_CONTROLS[field], M.IA32_VMX_TRUE_ENTRY_CTLS, M.IA32_VMX_ENTRY_CTLS)
        self.write(12, field, value, f"IA-32e mode guest, through {msr}", "vmwrite,VM_ENTRY_CONTROLS,rcx",
                   self.d5(msr))

    def step13(self) -> None:
        self.write(13, "GUEST_IA32_EFER", self.rdmsr(M.IA32_EFER), "RDMSR IA32_EFER", "vmwrite,GUEST_EFER,rbx")
        self.write(13, "GUEST_CR0", self.fixed(self.p.read_cr(0), M.IA32_VMX_CR0_FIXED0),
                   "(CR0 & CR0_FIXED1) | CR0_FIXED0", "vmwrite,GUEST_CR0,rbx")
        self.write(13, "GUEST_CR4", self.fixed(self.p.read_cr(4), M.IA32_VMX_CR4_FIXED0),
                   "(CR4 & CR4_FIXED1) | CR4_FIXED0", "vmwrite,GUEST_CR4,rbx")
        self.write(13, "GUEST_CR3", self.p.read_cr(3), "MOV from CR3", "vmwrite,GUEST_CR3,cr3")
        self.write(13, "GUEST_DR7", 0x400, "DR7 reset value", "invoke vmx_vmwrite,GUEST_DR7, 0400h")
        gl, gb = self.p.descriptor_table("sgdt")
        il, ib = self.p.descriptor_table("sidt")
        self.write(13, "GUEST_GDTR_BASE", gb, "SGDT", "vmwrite,GUEST_GDTR_BASE,rbx")
        self.write(13, "GUEST_GDTR_LIMIT", gl, "SGDT", "vmwrite,GUEST_GDTR_LIMIT, rax")
        self.write(13, "GUEST_IDTR_BASE", ib, "SIDT", "vmwrite,GUEST_IDTR_BASE,rbx")
        self.write(13, "GUEST_IDTR_LIMIT", il, "SIDT", "vmwrite,GUEST_IDTR_LIMIT,rax")
        self.write(13, "GUEST_RFLAGS", self.p.rflags(), "PUSHFQ", "pushfq / pop rax / vmwrite,GUEST_RFLAGS, rax")

    def step14(self) -> None:
        self.write(14, "MSR_BITMAP", self.env.msr_bitmap, "physical address of a zeroed 4-KiB bitmap",
                   "vmwrite,MSR_BITMAP, rdx")

    def step15(self) -> None:
        self.write(15, "GUEST_RSP", self.env.guest_rsp, "RSP at the load point", "vmwrite,GUEST_RSP, _GuestStack")
        self.write(15, "GUEST_RIP", self.env.guest_rip, "the instruction after the load point",
                   "vmwrite,GUEST_RIP, rax   (VMXRestoreState)")

    def step16(self) -> None:
        self.write(16, "HOST_RSP", self.env.host_stack_top, "top of the hypervisor's own stack",
                   "vmwrite,HOST_RSP, rdx")
        self.write(16, "HOST_RIP", self.env.host_rip, "the exit handler", "vmwrite,HOST_RIP, rax   (VMExitHandler)")

    # the seed line responsible for a field the checker names (literal mode)
    MISSING = {"HOST_CR4": "vmwrite,HOST_CR3, rbx   (the CR4 block writes HOST_CR3; HOST_CR4 is never written)",
               "VIRTUAL_PROCESSOR_ID": "or rcx,CPU_BASED_CTL2_ENABLE_VPID   (no VIRTUAL_PROCESSOR_ID written)",
               "EPT_POINTER": "or rcx,CPU_BASED_CTL2_ENABLE_EPT   (no EPT_POINTER written)"}

    def seed_line_for(self, field: str) -> str:
        for w in reversed(self.writes):
            if w.field == field:
                if field in self.MISSING and self.literal and w.value == 0:
                    break
                return f"step {w.step}: {w.seed}"
        return self.MISSING.get(field, "(not written by the seed)")
