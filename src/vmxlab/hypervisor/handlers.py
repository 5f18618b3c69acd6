"""VM-exit handling: a class with one method per exit reason (the shape of hvpp's
vmexit_handler), and composable observers for tracing and statistics.

ExitHandler.handle(cpu) is the Python host code at HOST_RIP.  It dispatches on
the basic exit reason to `on_<reason name in lower case>` (on_cpuid,
on_msr_read, on_cr_access ...); a method handles the exit (usually calling
self.advance(cpu) to skip the instruction) and handle() then VMRESUMEs -- unless
the method devirtualized or stopped the run.  Exit reasons without a method stop
the run with a report (reason, qualification, guest RIP): never silently.

Defaults (the seed's hypervisor): CPUID passes through with the hypervisor-present
bit (CPUID.1:ECX[31]) and leaf 40000000H answering the "vmxlab" signature;
RDMSR/WRMSR pass through and inject #GP(0) for MSRs the processor refuses; XSETBV,
INVD, CR access and MOV DR are emulated; VMX instructions executed by the guest
get #UD; VMCALL is the hypercall interface (RAX = HC_PING: RAX <- "pong";
HC_UNLOAD: VMXOFF and devirtualize); EPT violations and misconfigurations stop
the run with their qualification and addresses.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ..arch import controls as C
from ..arch import events as EV
from ..arch import exits as X
from ..arch import fields as F
from ..arch import registers as AR
from ..arch.cpuid import HYPERVISOR_LEAF
from ..machine import registers as REG
from ..machine.intercepts import Kind

HC_PING, HC_UNLOAD = 0x564D5801, 0x564D5802
PONG = 0x706F6E67
SIGNATURE = b"vmxlab\0\0\0\0\0\0"        # CPUID 40000000H EBX, ECX, EDX
_GPR = REG.GPRS_NAMES[:16]
_MASK64 = (1 << 64) - 1
# MOV DR's register number -> machine control-register index (DR4/DR5 alias DR6/DR7)
_DR_INDEX = {0: REG.DR0, 1: REG.DR1, 2: REG.DR2, 3: REG.DR3, 4: REG.DR6, 5: REG.DR7, 6: REG.DR6, 7: REG.DR7}


class ExitHandler:
    def __init__(self):
        self.devirtualized = False
        self.report: str | None = None
        self._dispatch: dict[int, Callable] = {}
        for number, reason in X.REASONS.items():
            fn = getattr(self, f"on_{reason.name.lower()}", None)
            if fn is not None:
                self._dispatch[number] = fn

    # -- the host code at HOST_RIP --------------------------------------------------------
    def handle(self, cpu) -> None:
        exit = cpu.exit
        fn = self._dispatch.get(exit.basic) if not exit.entry_failure else self.on_entry_failure
        if fn is None:
            self.unhandled(cpu, "no handler for this exit reason")
            return
        fn(cpu)
        if not self.devirtualized and self.report is None:
            cpu.vmresume()

    def unhandled(self, cpu, why: str) -> None:
        e = cpu.exit
        self.report = (f"{why}: exit reason {e.basic} ({e.name}), qualification {e.qualification:#x}, "
                       f"guest RIP {e.guest_rip:#x}")
        cpu.stop(self.report)

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def advance(cpu) -> None:
        """GUEST_RIP += VM-exit instruction length."""
        cpu.vmwrite(F.GUEST_RIP, cpu.vmread(F.GUEST_RIP) + cpu.vmread(F.VM_EXIT_INSTRUCTION_LEN))

    @staticmethod
    def inject(cpu, vector: int, itype: int = EV.INTR_TYPE_HARD_EXCEPTION, error_code: int | None = None) -> None:
        """Inject an event at the next VM entry ("Event Injection")."""
        cpu.vmwrite(F.VM_ENTRY_INTR_INFO_FIELD, EV.intr_info(vector, itype, error_code is not None))
        if error_code is not None:
            cpu.vmwrite(F.VM_ENTRY_EXCEPTION_ERROR_CODE, error_code)

    @staticmethod
    def regs(cpu, *names: str) -> list[int]:
        g = cpu.m.gprs.read()
        return [g[REG.GPR_INDEX[n]] for n in names]

    @staticmethod
    def set_regs(cpu, **values: int) -> None:
        g = cpu.m.gprs.read()
        for name, value in values.items():
            g[REG.GPR_INDEX[name]] = value & _MASK64
        cpu.m.gprs.write()

    # -- exit reasons ------------------------------------------------------------------------------
    def on_cpuid(self, cpu) -> None:
        leaf, sub = (x & 0xFFFFFFFF for x in self.regs(cpu, "RAX", "RCX"))
        if leaf == HYPERVISOR_LEAF:
            eax = HYPERVISOR_LEAF
            ebx, ecx, edx = (int.from_bytes(SIGNATURE[i:i + 4], "little") for i in (0, 4, 8))
        else:
            eax, ebx, ecx, edx = cpu.m.cpuid.query(leaf, sub, 0)   # the processor's own CPUID
            if leaf == 1:
                ecx |= 1 << 31                                      # hypervisor present
            # features the guest cannot use because their VM-execution control is 0 (the
            # instruction is #UD in VMX non-root operation) are not reported
            sec = cpu.vmread(F.SECONDARY_VM_EXEC_CONTROL) if cpu.vmread(F.CPU_BASED_VM_EXEC_CONTROL) \
                & C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0
            if leaf == 0x80000001 and not sec & C.SECONDARY_EXEC_ENABLE_RDTSCP:
                edx &= ~(1 << 27)
            if leaf == 7 and sub == 0 and not sec & C.SECONDARY_EXEC_ENABLE_INVPCID:
                ebx &= ~(1 << 10)
            if leaf == 0xD and sub == 1 and not sec & C.SECONDARY_EXEC_ENABLE_XSAVES:
                eax &= ~(1 << 3)
        self.set_regs(cpu, RAX=eax, RBX=ebx, RCX=ecx, RDX=edx)
        self.advance(cpu)

    def on_msr_read(self, cpu) -> None:
        from ..caps import msrmodel
        index = self.regs(cpu, "RCX")[0] & 0xFFFFFFFF
        if msrmodel.rdmsr_fault(cpu.profile, index):
            self.inject(cpu, EV.GP, error_code=0)                   # the processor refuses it: #GP(0)
            return
        value = cpu.m.msrs.read(index)
        self.set_regs(cpu, RAX=value & 0xFFFFFFFF, RDX=value >> 32)
        self.advance(cpu)

    def on_msr_write(self, cpu) -> None:
        from ..caps import msrmodel
        rcx, rax, rdx = self.regs(cpu, "RCX", "RAX", "RDX")
        index, value = rcx & 0xFFFFFFFF, ((rdx & 0xFFFFFFFF) << 32) | (rax & 0xFFFFFFFF)
        current = cpu.m.msrs.peek(index) if cpu.m.msrs.exists(index) else None
        if msrmodel.wrmsr_fault(cpu.profile, index, value, current):
            self.inject(cpu, EV.GP, error_code=0)
            return
        cpu.m.msrs.write(index, value)
        self.advance(cpu)

    def on_xsetbv(self, cpu) -> None:
        """XSETBV ("XSETBV-Set Extended Control Register"): XCR0 only, with the value
        rules of "Extended Control Registers (Including XCR0)" (arch.registers.xcr0_problem);
        CPL > 0 and CR4.OSXSAVE = 0 fault before the VM exit (they have priority)."""
        ecx, eax, edx = (x & 0xFFFFFFFF for x in self.regs(cpu, "RCX", "RAX", "RDX"))
        value = (edx << 32) | eax
        leaf_d = cpu.m.cpuid.query(0xD, 0, 0)
        supported = (leaf_d[3] << 32) | leaf_d[0]
        if ecx != 0 or AR.xcr0_problem(value, supported) is not None:
            self.inject(cpu, EV.GP, error_code=0)
            return
        state = cpu.m.get_state()
        state["XCR0"] = value
        cpu.m.set_state(state)
        self.advance(cpu)

    def on_invd(self, cpu) -> None:
        self.advance(cpu)                    # caches are not modelled: INVD as a write-back

    def on_cr_access(self, cpu) -> None:
        q = X.QUAL_CR_ACCESS.decode(cpu.exit.qualification)
        cr, access, gpr = q["cr"], q["access"], _GPR[q["gpr"]]
        if access == 0:                       # MOV to CR
            value = self.regs(cpu, gpr)[0]
            if cr in (0, 4):
                cpu.vmwrite(F.GUEST_CR0 if cr == 0 else F.GUEST_CR4, value)
                cpu.vmwrite(F.CR0_READ_SHADOW if cr == 0 else F.CR4_READ_SHADOW, value)
            elif cr == 3:
                cpu.vmwrite(F.GUEST_CR3, value)
            elif cr == 8:
                cpu.m.cr8 = value & 0xF
        elif access == 1:                     # MOV from CR
            value = cpu.vmread(F.GUEST_CR3) if cr == 3 else cpu.m.cr8
            self.set_regs(cpu, **{gpr: value})
        elif access == 2:                     # CLTS
            cpu.vmwrite(F.GUEST_CR0, cpu.vmread(F.GUEST_CR0) & ~8)
        else:                                 # LMSW
            src = q["lmsw_source"]
            cr0 = cpu.vmread(F.GUEST_CR0)
            cpu.vmwrite(F.GUEST_CR0, (cr0 & ~0xE) | (src & 0xE) | ((cr0 | src) & 1))
        self.advance(cpu)

    def on_dr_access(self, cpu) -> None:
        """MOV DR, emulated.  Its VM exit "takes priority over" the #GP for CPL > 0 and
        the #UD for DR4/DR5 with CR4.DE = 1 ("Instructions That Cause VM Exits
        Conditionally"), so the handler raises them, and the general-detect #DB
        ("MOV-Move to/from Debug Registers"): DR4/DR5 alias DR6/DR7 when CR4.DE = 0."""
        q = X.QUAL_DR_ACCESS.decode(cpu.exit.qualification)
        dr, gpr = q["dr"], _GPR[q["gpr"]]
        if (cpu.vmread(F.GUEST_SS_AR_BYTES) >> 5) & 3:          # SS.DPL is the CPL
            self.inject(cpu, EV.GP, error_code=0)
            return
        if dr in (4, 5) and cpu.vmread(F.GUEST_CR4) & AR.CR4_DE:
            self.inject(cpu, EV.UD)
            return
        dr7 = cpu.vmread(F.GUEST_DR7)
        c = cpu.m.ctrl.read()
        if dr7 & AR.DR7_GD:
            # "Debug Exception Conditions": DR6.BD set; the processor clears DR7.GD on
            # entering the #DB handler -- event injection does neither, so the handler does
            c[REG.DR6] = (c[REG.DR6] & ~AR.DR6_B0_B3) | AR.DR6_BD
            cpu.m.ctrl.write()
            cpu.vmwrite(F.GUEST_DR7, dr7 & ~AR.DR7_GD)
            self.inject(cpu, EV.DB)
            return
        index = _DR_INDEX[dr]
        if q["direction"] == 0:
            value = self.regs(cpu, gpr)[0]
            if dr in (5, 7):
                cpu.vmwrite(F.GUEST_DR7, value)
            else:
                c[index] = value
                cpu.m.ctrl.write()
        else:
            value = dr7 if dr in (5, 7) else c[index]
            self.set_regs(cpu, **{gpr: value})
        self.advance(cpu)

    def on_vmx_instruction(self, cpu) -> None:
        self.inject(cpu, EV.UD)               # no nested virtualization: #UD

    on_vmclear = on_vmlaunch = on_vmptrld = on_vmptrst = on_vmread = on_vmresume = on_vmwrite = \
        on_vmoff = on_vmon = on_invept = on_invvpid = on_vmfunc = on_vmx_instruction

    def on_vmcall(self, cpu) -> None:
        rax = self.regs(cpu, "RAX")[0] & 0xFFFFFFFF
        if rax == HC_PING:
            self.set_regs(cpu, RAX=PONG)
            self.advance(cpu)
        elif rax == HC_UNLOAD:
            rip = cpu.vmread(F.GUEST_RIP) + cpu.vmread(F.VM_EXIT_INSTRUCTION_LEN)
            self.set_regs(cpu, RAX=0)
            self.devirtualized = True
            cpu.devirtualize(rip)
        else:
            self.set_regs(cpu, RAX=_MASK64)   # unknown hypercall: -1
            self.advance(cpu)

    def on_io_instruction(self, cpu) -> None:
        q = X.QUAL_IO.decode(cpu.exit.qualification)
        if q["string"]:
            self.unhandled(cpu, "string I/O is not passed through")
            return
        size = {0: 1, 1: 2, 3: 4}[q["size"]]
        if q["direction"]:
            value = cpu.m.io.read(q["port"], size)
            rax = self.regs(cpu, "RAX")[0]
            mask = (1 << (8 * size)) - 1
            self.set_regs(cpu, RAX=(rax & ~mask) | (value & mask) if size < 4 else value & mask)
        else:
            cpu.m.io.write(q["port"], size, self.regs(cpu, "RAX")[0] & ((1 << (8 * size)) - 1))
        self.advance(cpu)

    def on_ept_violation(self, cpu) -> None:
        e = cpu.exit
        what = ", ".join(f"{n}" for n, v in X.QUAL_EPT_VIOLATION.decode(e.qualification).items() if v)
        self.unhandled(cpu, f"EPT violation at guest-physical {e.guest_physical:#x} "
                            f"(linear {e.guest_linear if e.guest_linear is not None else 0:#x}; {what})")

    def on_ept_misconfig(self, cpu) -> None:
        self.unhandled(cpu, f"EPT misconfiguration at guest-physical {cpu.exit.guest_physical:#x}")

    def on_triple_fault(self, cpu) -> None:
        self.unhandled(cpu, "the guest triple-faulted")

    def on_entry_failure(self, cpu) -> None:
        self.unhandled(cpu, "VM entry failed")


# ---- observers ---------------------------------------------------------------------------------
class Statistics:
    """Counts exits per reason (an observer: cpu.observers.append(stats))."""

    def __init__(self):
        self.counts: Counter = Counter()

    def __call__(self, cpu, exit) -> None:
        self.counts[exit.name if not exit.entry_failure else f"{exit.name} (entry failure)"] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Tracer:
    """kvm_exit trace lines, in the shape of Linux's kvm_exit tracepoint."""

    def __init__(self, sink: Callable[[str], None] | None = None):
        self.lines: list[str] = []
        self.sink = sink

    def __call__(self, cpu, exit) -> None:
        line = kvm_exit_line(exit)
        self.lines.append(line)
        if self.sink:
            self.sink(line)


def kvm_exit_line(exit, vcpu: int = 0) -> str:
    reason = exit.name + (" FAILED_VMENTRY" if exit.entry_failure else "")
    return (f"kvm_exit: vcpu {vcpu} reason {reason} rip {exit.guest_rip:#x} info1 {exit.qualification:#018x} "
            f"info2 {exit.idt_vectoring_info:#018x} intr_info {exit.intr_info:#010x} "
            f"error_code {exit.intr_error_code:#010x}")
