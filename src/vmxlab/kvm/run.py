"""The kvm backend of `vmxlab run`: the virtualized part of the run on /dev/kvm.

hypervisor/run.py boots the kernel, loads the image and the hypervisor and executes
VMLAUNCH on the simulated processor (the VM-entry checks, VMfail and VM-entry
failures are the simulator's: KVM is no oracle for them here).  After a successful
VM entry the simulated processor holds the guest state the VMCS loaded ("Loading
Guest State"); continue_on_kvm() hands that running system to a KVM vCPU: the
memory is copied, the state loaded (CR4.VMXE cleared: KVM has no VMX for its guest),
and the guest runs on from there.

What reaches the hypervisor's handlers (hypervisor.run.RunHandler, the same object
as on the simulator), decided from the VMCS as VMX would decide (SDM Vol. 3C
"VM-Execution Control Fields", "Instructions That Cause VM Exits Conditionally"):
- IN/OUT: an IO_INSTRUCTION exit when "unconditional I/O exiting" or the I/O bitmaps
  say so (vmx.bitmaps.io_exits), else the access goes to the platform's devices
  directly -- the simulator's I/O bus with its UART, so the console is one text;
- HLT: a HLT exit under "HLT exiting", else the guest halted;
- RDMSR/WRMSR: an MSR_READ/MSR_WRITE exit for the MSRs the MSR bitmaps select and
  for MSRs outside the bitmap ranges ("RDMSR"/"WRMSR" exit unconditionally there):
  KVM's MSR filter makes these exit to us (the out-of-range blocks KVM implements
  itself, and any MSR KVM does not know);
- an access to guest-physical memory with no RAM: EPT_VIOLATION (KVM MMIO exit);
- triple fault: TRIPLE_FAULT;
- VMCALL: KVM does not exit to user space for it.  On the PVM hosts of
  ../shared/notes/kvm.md a CPL0 VMCALL livelocks inside KVM_RUN: the run goes in
  slices of SLICE seconds and a slice that ends with RIP at a VMCALL is taken as a
  VMCALL exit.  On hardware KVM answers the hypercall itself (RAX = -KVM_ENOSYS).

The handlers see the exit through a view (_HostView) with the part of VmxCpu they
use; afterwards the view's effects become KVM's: IN data and RDMSR values as the
exit's reply, #GP injection as the MSR exit's #GP, GUEST_RIP and register changes
through the state.  Devirtualization (the unload hypercall) moves the guest to a
fresh vCPU whose CPUID is the processor's own, without the hypervisor.

Not like VMX: KVM answers CPUID and XSETBV from its own tables (they exit
unconditionally under VMX), so those exits are missing; KVM's CPUID table carries
the hypervisor-present bit and the vmxlab signature at 40000000H (what the Python
handler answers), on KVM's own feature bits.  Other exiting controls have no
effect here (listed in the result's notes).  XGETBV, which KVM's instruction
emulator cannot run on these hosts (KVM_EXIT_INTERNAL_ERROR), is completed here,
and an undefined opcode it reports the same way raises #UD; other instructions it
lacks (x87, SSE, INT n at CPL0 ...) end the run with outcome "error"."""
from __future__ import annotations

import time

import iced_x86

from ..arch import controls as C
from ..arch import events as EV
from ..arch import exits as X
from ..arch import fields as F
from ..arch.cpuid import HYPERVISOR_LEAF
from ..arch.msrs import X2APIC_FIRST, X2APIC_LAST
from ..errors import BadInput
from ..hypervisor import run as R
from ..hypervisor.bluepill import HOST_HANDLER
from ..hypervisor.handlers import SIGNATURE
from ..machine import registers as REG
from ..vmx.bitmaps import io_exits, msr_exits
from ..vmx.cpu import ExitInfo
from . import abi
from .exits import HltExit, IoExit, KvmReport, MmioExit, MsrExit, TripleFaultExit
from .machine import KvmMachine
from .system import KvmError, shared_kvm

SLICE = 0.05                     # seconds of KVM_RUN between looks for a livelocked VMCALL
VMCALL = b"\x0f\x01\xc1"
XGETBV = b"\x0f\x01\xd0"
CR4_VMXE, CR4_OSXSAVE = 1 << 13, 1 << 18
RFLAGS_IF = 1 << 9
# MSR blocks outside the MSR-bitmap ranges that KVM implements itself (its paravirtual
# MSRs, the Hyper-V/KVM synthetic range, AMD's): under VMX every access to them exits
_OUT_OF_RANGE_BLOCKS = ((0x40000000, 0x400000FF), (0x4B564D00, 0x4B564DFF), (0xC0010000, 0xC0011FFF))
_BITMAP_RANGES = ((0x0, 0x1FFF), (0xC0000000, 0xC0001FFF))
_GPRS = REG.GPRS_NAMES[:16]


def preflight() -> None:
    """KvmUnavailable (a BadInput: one line, exit status 2) unless /dev/kvm opens and
    makes a VM with a vCPU."""
    KvmMachine().close()


# ---- CPUID ----------------------------------------------------------------------------------------
def cpuid_table(hypervisor: bool) -> list:
    """KVM's supported CPUID with the hypervisor's view (CPUID.1:ECX[31] = 1, leaf
    40000000H = max leaf 40000000H and "vmxlab", as handlers.ExitHandler.on_cpuid
    answers) or the processor's own (bit 31 clear, no 4000xxxxH leaves)."""
    out = []
    for e in shared_kvm().supported_cpuid():
        c = abi.kvm_cpuid_entry2.from_buffer_copy(e)
        if 0x40000000 <= c.function <= 0x4FFFFFFF:
            continue
        if c.function == 1:
            c.ecx = c.ecx | (1 << 31) if hypervisor else c.ecx & ~(1 << 31)
        out.append(c)
    if hypervisor:
        c = abi.kvm_cpuid_entry2()
        c.function, c.eax = HYPERVISOR_LEAF, HYPERVISOR_LEAF
        c.ebx, c.ecx, c.edx = (int.from_bytes(SIGNATURE[i:i + 4], "little") for i in (0, 4, 8))
        out.append(c)
    return out


_CHUNK = 0x10000
_ZERO = bytes(_CHUNK)


def _copy_memory(km: KvmMachine, memory: bytes) -> None:
    """Guest RAM into the vCPU's (fresh, zeroed) memory: the non-zero 64-KiB chunks."""
    view = memoryview(memory)
    for a in range(0, len(memory), _CHUNK):
        chunk = view[a:a + _CHUNK]
        if chunk != _ZERO[:len(chunk)]:
            km.phys_write(a, chunk)


# ---- what exits, from the VMCS --------------------------------------------------------------------
class _Controls:
    def __init__(self, values: dict, read, host_rip: int):
        """values: the VMCS by encoding; read(physical address, n) -> bytes (the
        hypervisor's memory, where its bitmaps are); host_rip: the Python handler's."""
        self.v, self._read, self._pages, self.host_rip = values, read, {}, host_rip

    @property
    def cpu(self) -> int:
        return self.v.get(F.CPU_BASED_VM_EXEC_CONTROL, 0)

    @property
    def sec(self) -> int:
        return self.v.get(F.SECONDARY_VM_EXEC_CONTROL, 0) if self.cpu & C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0

    @property
    def pin(self) -> int:
        return self.v.get(F.PIN_BASED_VM_EXEC_CONTROL, 0)

    def read_byte(self, address: int) -> int:
        page = self._pages.get(address >> 12)
        if page is None:
            page = self._pages[address >> 12] = self._read(address & ~0xFFF, 0x1000)
        return page[address & 0xFFF]

    def io_exits(self, port: int, size: int) -> bool:
        maps = (self.v.get(F.IO_BITMAP_A, 0), self.v.get(F.IO_BITMAP_B, 0)) \
            if self.cpu & C.CPU_BASED_USE_IO_BITMAPS else None
        return io_exits(port, size, bool(self.cpu & C.CPU_BASED_UNCOND_IO_EXITING), maps, self.read_byte)

    def msr_exits(self, index: int, write: bool) -> bool:
        bitmap = self.v.get(F.MSR_BITMAP, 0) if self.cpu & C.CPU_BASED_USE_MSR_BITMAPS else None
        return msr_exits(bitmap, index, write, self.read_byte)

    @property
    def hlt_exits(self) -> bool:
        return bool(self.cpu & C.CPU_BASED_HLT_EXITING)

    def msr_intercepts(self) -> tuple[list[int], list[int], list[str]]:
        """(read, write) MSR lists for KVM's filter, and notes."""
        bitmap = self.v.get(F.MSR_BITMAP, 0) if self.cpu & C.CPU_BASED_USE_MSR_BITMAPS else None
        reads, writes, notes = [], [], []
        x2apic = False
        for lo, hi in _BITMAP_RANGES:
            for index in range(lo, hi + 1):
                for write, out in ((False, reads), (True, writes)):
                    if msr_exits(bitmap, index, write, self.read_byte):
                        if X2APIC_FIRST <= index <= X2APIC_LAST:
                            x2apic = True
                        else:
                            out.append(index)
        if x2apic:
            notes.append("x2APIC MSR accesses that the MSR bitmaps make exit do not exit on KVM "
                         "(its MSR filter does not cover them)")
        for lo, hi in _OUT_OF_RANGE_BLOCKS:
            reads.extend(range(lo, hi + 1))
            writes.extend(range(lo, hi + 1))
        return reads, writes, notes

    def unhonoured(self) -> list[str]:
        """Notes on what the VMCS asks for that this backend does not do."""
        honoured_cpu = (C.CPU_BASED_UNCOND_IO_EXITING | C.CPU_BASED_USE_IO_BITMAPS | C.CPU_BASED_HLT_EXITING
                        | C.CPU_BASED_USE_MSR_BITMAPS | C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
        default1 = C.CONTROL_FIELDS["CPU_BASED_VM_EXEC_CONTROL"].default1
        names = C.names_of("CPU_BASED_VM_EXEC_CONTROL", self.cpu & ~honoured_cpu & ~default1)
        sec_exiting = (C.SECONDARY_EXEC_WBINVD_EXITING | C.SECONDARY_EXEC_RDRAND_EXITING
                       | C.SECONDARY_EXEC_RDSEED_EXITING | C.SECONDARY_EXEC_DESC)
        names += C.names_of("SECONDARY_VM_EXEC_CONTROL", self.sec & sec_exiting)
        pin_default1 = C.CONTROL_FIELDS["PIN_BASED_VM_EXEC_CONTROL"].default1
        names += C.names_of("PIN_BASED_VM_EXEC_CONTROL", self.pin & ~pin_default1)
        notes = [f"{name} is set but has no effect on this backend" for name in names]
        for name in ("EXCEPTION_BITMAP", "CR0_GUEST_HOST_MASK", "CR4_GUEST_HOST_MASK", "VM_EXIT_MSR_STORE_COUNT",
                     "VM_EXIT_MSR_LOAD_COUNT"):
            value = self.v.get(F.by_name(name).encoding, 0)
            if value:
                notes.append(f"{name} = {value:#x} has no effect on this backend")
        host_rip = self.v.get(F.HOST_RIP, 0)
        if host_rip != self.host_rip:
            notes.append(f"HOST_RIP = {host_rip:#x} is not the Python handler's address; on this backend the "
                         "exits still go to the handler")
        return notes


# ---- the handlers' view of the processor at an exit ---------------------------------------------------
class _Gprs:
    """cpu.m.gprs as the handlers use it: read() -> the list (16 GPRs, RIP, RFLAGS),
    changed in place, write() to commit."""

    def __init__(self, state: dict):
        self.values = [state["GUEST_RSP"] if n == "RSP" else state[n] for n in _GPRS]
        self.values += [state["GUEST_RIP"], state["GUEST_RFLAGS"]]
        self.original = list(self.values)

    def read(self) -> list[int]:
        return self.values

    def write(self) -> None:
        pass

    def changed(self) -> dict[str, int]:
        names = (*_GPRS, "RIP", "RFLAGS")
        return {names[i]: v for i, (v, o) in enumerate(zip(self.values, self.original)) if v != o}


class _Msrs:
    """cpu.m.msrs as the MSR handlers use it, on the vCPU's MSRs; writes are applied
    after the exit is answered."""

    def __init__(self, km: KvmMachine):
        self.km = km
        self.writes: list[tuple[int, int]] = []

    def exists(self, index: int) -> bool:
        return self.km.read_msr(index) is not None

    def peek(self, index: int) -> int:
        return self.km.read_msr(index) or 0

    read = peek

    def write(self, index: int, value: int) -> None:
        self.writes.append((index, value))


class _Platform:
    def __init__(self, io, gprs, msrs):
        self.io, self.gprs, self.msrs = io, gprs, msrs


class _HostView:
    """The part of vmx.cpu.VmxCpu the exit handlers use, for one KVM exit."""

    def __init__(self, km: KvmMachine, exit: ExitInfo, profile, vmcs: dict, io):
        self.exit, self.profile, self._vmcs, self._km = exit, profile, vmcs, km
        self._state = km.get_state()
        self.m = _Platform(io, _Gprs(self._state), _Msrs(km))
        self.writes: dict[int, int] = {}
        self.resumed = False
        self.stopped: str | None = None
        self.devirtualize_at: int | None = None

    def vmread(self, field) -> int:
        enc = field if isinstance(field, int) else F.by_name(field).encoding
        if enc in self.writes:
            return self.writes[enc]
        e = self.exit
        info = {F.GUEST_RIP: e.guest_rip, F.VM_EXIT_INSTRUCTION_LEN: e.instruction_length,
                F.EXIT_QUALIFICATION: e.qualification, F.VM_EXIT_REASON: e.reason,
                F.VMX_INSTRUCTION_INFO: e.instruction_info, F.GUEST_PHYSICAL_ADDRESS: e.guest_physical or 0}
        if enc in info:
            return info[enc]
        f = F.BY_ENCODING.get(enc)
        if f is not None and f.name in self._state:
            return self._state[f.name]
        return self._vmcs.get(enc, 0)

    def vmwrite(self, field, value: int) -> None:
        enc = field if isinstance(field, int) else F.by_name(field).encoding
        self.writes[enc] = value

    def vmresume(self) -> None:
        self.resumed = True

    def stop(self, why: str = "stop requested") -> None:
        self.stopped = why

    def devirtualize(self, rip: int) -> None:
        self.devirtualize_at = rip


# ---- the run ----------------------------------------------------------------------------------------
class _KvmRun:
    def __init__(self, s: R.Session, timeout: float):
        self.s, self.r = s, s.result
        self.profile = s.profile
        self.vmcs = dict(s.cpu.vmx.current_vmcs.values)
        mem = s.m.mem
        self.controls = _Controls(self.vmcs, lambda a, n: mem.read(a, n) if mem.contains(a, n) else bytes(n),
                                  HOST_HANDLER)
        self.io = s.m.io
        self.timeout = timeout
        self.virtualized = True
        self.km: KvmMachine | None = None

    # -- machines --
    def _new_machine(self, hypervisor: bool, memory: bytes, state: dict) -> KvmMachine:
        km = KvmMachine(len(memory))
        try:
            km.set_cpuid(cpuid_table(hypervisor))
            if hypervisor:
                reads, writes, notes = self.controls.msr_intercepts()
                self.r.notes.extend(notes)
                km.intercept_msrs(read=reads, write=writes, unknown=True)
            _copy_memory(km, memory)
            km.set_state(state)
        except BaseException:
            km.close()
            raise
        return km

    def start(self) -> bool:
        m = self.s.m
        state = m.get_state()                     # the guest state VM entry loaded
        state["GUEST_CR4"] &= ~CR4_VMXE           # KVM gives its guest no VMX (notes/kvm.md)
        if state["GUEST_ACTIVITY_STATE"] == EV.ACTIVITY_HLT:
            # VM entry into the HLT state ("Guest Non-Register State"): on this backend
            # nothing raises an interrupt, so nothing can wake the processor
            self.r.outcome = "halted"
            self.r.detail = f"VM entry in the HLT activity state; nothing can wake the processor; RIP {state['GUEST_RIP']:#x}"
            self.r.registers = R.registers_of(state)
            return False
        try:
            self.km = self._new_machine(True, m.mem.read(0, m.mem.size), state)
        except BadInput as e:
            self.r.outcome, self.r.detail = "error", f"KVM refuses the guest state after VM entry: {e}"
            return False
        self.r.notes.append("CPUID and XSETBV are answered by KVM from its own tables (its CPUID table has the "
                            "hypervisor bit and the vmxlab signature): no CPUID or XSETBV exits on this backend")
        self.r.notes.extend(self.controls.unhonoured())
        return True

    def devirtualize(self) -> None:
        """The hypervisor left (VMXOFF): the guest continues on a vCPU without it."""
        old = self.km
        state = old.get_state()
        memory = old.phys_read(0, old.memory[0][1])
        self.km = self._new_machine(False, memory, state)
        old.close()
        self.virtualized = False

    # -- the loop --
    def run(self) -> None:
        r = self.r
        t0 = time.perf_counter()
        self.deadline = time.monotonic() + self.timeout
        try:
            while not r.outcome:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    r.outcome, r.detail = "budget exhausted", f"{r.timeout:g} s of run time used up (--timeout)"
                    break
                self.step(self.km.run(timeout=min(SLICE, left)))
        except (KvmError, BadInput) as e:          # KVM refused what a handler asked for
            r.outcome, r.detail = "error", f"KVM: {e}"
        finally:
            r.seconds = time.perf_counter() - t0

    def step(self, ex) -> None:
        r, c = self.r, self.controls
        if isinstance(ex, IoExit):
            if self.virtualized and c.io_exits(ex.port, ex.size):
                qualification = ex.qualification
                rip, length = self.io_instruction(ex)
                self.vm_exit(ExitInfo(X.IO_INSTRUCTION, qualification, rip, length, ex.instruction_info or 0), ex)
            elif ex.is_in:
                ex.reply(self.io.read(ex.port, ex.size))
            else:
                self.io.write(ex.port, ex.size, ex.value)
        elif isinstance(ex, HltExit):
            rip = ex.rip - 1 if self.km.read_virtual(ex.rip - 1, 1) == b"\xf4" else ex.rip
            if self.virtualized and c.hlt_exits:
                self.vm_exit(ExitInfo(X.HLT, 0, rip, 1), ex)
                if self.s.handler.halted:
                    r.outcome, r.detail = "halted", f"HLT exit at guest RIP {rip:#x}"
            else:
                r.outcome = "devirtualized" if self.s.handler.devirtualized else "halted"
                if self.km.get_state()["GUEST_RFLAGS"] & RFLAGS_IF:
                    r.detail = (f"HLT with RFLAGS.IF=1; RIP {ex.rip:#x} (the kvm backend raises no "
                                "interrupts: nothing can wake the processor)")
                else:
                    r.detail = f"HLT with nothing that can wake the processor; RIP {ex.rip:#x}"
        elif isinstance(ex, MsrExit):
            if self.virtualized and c.msr_exits(ex.index, ex.is_write):
                reason = X.MSR_WRITE if ex.is_write else X.MSR_READ
                self.vm_exit(ExitInfo(reason, 0, ex.rip, 2), ex)
            else:            # an MSR KVM does not know, accessed without a VM exit: #GP(0)
                ex.inject_gp()
        elif isinstance(ex, MmioExit):
            if self.virtualized:
                self.vm_exit(ExitInfo(X.EPT_VIOLATION, ex.qualification, ex.rip, 0,
                                      guest_physical=ex.gpa), ex)
            else:
                r.outcome, r.detail = "error", (f"{'write' if ex.is_write else 'read'} at physical {ex.gpa:#x} "
                                                f"(rip {ex.rip:#x}): no memory there")
        elif isinstance(ex, TripleFaultExit):
            if self.virtualized:
                self.vm_exit(ExitInfo(X.TRIPLE_FAULT, 0, ex.rip), ex)
            else:
                r.outcome, r.detail = "shutdown", f"triple fault at {ex.rip:#x}"
        elif isinstance(ex, KvmReport):
            self.report(ex)
        else:
            r.outcome, r.detail = "error", f"unexpected KVM exit {ex.describe()}"
        if not r.outcome and self.s.handler.exhausted:
            r.outcome = "budget exhausted"
            r.detail = f"more than {self.s.recorder.max_exits} VM exits (--max-exits)"

    def io_instruction(self, ex: IoExit) -> tuple[int, int]:
        """Guest RIP and length of the I/O instruction.  An OUT/OUTS that KVM's emulator
        retired before the exit (PVM hosts) ends at RIP; its start is found assuming
        the shortest encoding (opcode, imm8 port, 66H for a 16-bit operand outside
        16-bit code: no redundant prefixes), checked against the bytes before RIP."""
        if ex.instruction_address is not None:
            return ex.instruction_address, ex.instruction_length or 0
        d = ex.instruction
        if d is None:
            return ex.rip, 0
        st = self.km.get_state()
        if st["GUEST_IA32_EFER"] & (1 << 10) and st["GUEST_CS_AR_BYTES"] & (1 << 13):
            mode = 64
        else:
            mode = 32 if st["GUEST_CS_AR_BYTES"] & (1 << 14) else 16
        prefix = d.size != 1 and (d.size == 2) != (mode == 16)
        length = 1 + d.immediate + prefix
        code = self.km.read_virtual(ex.rip - length, length)
        opcode = (0x6E if d.string else 0xE6 if d.immediate else 0xEE) | (d.size != 1)
        if len(code) == length and code[prefix] == opcode and (not prefix or code[0] == 0x66):
            self.note_once("OUT: KVM's emulator retires an OUT before the exit on this host; its guest RIP and "
                           "length assume the shortest encoding (no redundant prefixes)")
            return ex.rip - length, length
        return ex.rip, 0

    def report(self, ex: KvmReport) -> None:
        r = self.r
        if ex.watchdog:
            state = self.km.get_state()
            rip = state["GUEST_RIP"]
            if self.km.read_virtual(rip, 3) == VMCALL:
                if self.virtualized:
                    self.note_once("VMCALL: KVM_RUN livelocked at it (a PVM host) and the slice watchdog "
                                   "took it as a VMCALL exit")
                    self.vm_exit(ExitInfo(X.VMCALL, 0, rip, 3), None)
                else:                                       # outside VMX operation VMCALL is #UD
                    self.km.inject_exception(EV.UD)
            return                                          # a slice ended: go on (the deadline is checked)
        if ex.suberror == abi.KVM_INTERNAL_ERROR_EMULATION and ex.insn_bytes and ex.insn_bytes[:3] == XGETBV:
            self.xgetbv()
            return
        if ex.suberror == abi.KVM_INTERNAL_ERROR_EMULATION and ex.insn_bytes and self.invalid_opcode(ex.insn_bytes):
            # an encoding that is no instruction in this mode: #UD ("Invalid Opcode"),
            # which KVM's emulator on these hosts reports as an emulation failure instead
            self.km.inject_exception(EV.UD)
            self.note_once("#UD: KVM's instruction emulator reports undefined opcodes as emulation failures on "
                           "this host; the backend raised #UD")
            return
        if ex.suberror == abi.KVM_INTERNAL_ERROR_EMULATION and self.virtualized:
            # KVM cannot fetch code from guest-physical memory without RAM; under VMX the
            # fetch is an EPT violation (the EPT maps RAM only): fetch, linear address valid,
            # access to the translated address ("Exit Qualification for EPT Violations")
            rip = self.km.get_state()["GUEST_RIP"]
            gpa = self.km.translate(rip)
            if gpa is not None and not any(lo <= gpa < lo + n for lo, n, _ in self.km.memory):
                qual = X.QUAL_EPT_VIOLATION.encode(fetch=1, gla_valid=1, gla_translation=1)
                self.vm_exit(ExitInfo(X.EPT_VIOLATION, qual, rip, 0, guest_linear=rip, guest_physical=gpa), None)
                return
        r.outcome, r.detail = "error", ex.message

    def invalid_opcode(self, code: bytes) -> bool:
        st = self.km.get_state()
        if st["GUEST_IA32_EFER"] & (1 << 10) and st["GUEST_CS_AR_BYTES"] & (1 << 13):
            bits = 64
        else:
            bits = 32 if st["GUEST_CS_AR_BYTES"] & (1 << 14) else 16
        decoder = iced_x86.Decoder(bits, code, ip=st["GUEST_RIP"])
        insn = decoder.decode()
        return insn.code == iced_x86.Code.INVALID and decoder.last_error == iced_x86.DecoderError.INVALID_INSTRUCTION

    def xgetbv(self) -> None:
        """XGETBV ("XGETBV-Get Value of Extended Control Register"), which KVM's emulator
        cannot run here: #UD unless CR4.OSXSAVE, #GP(0) unless ECX = 0 (XCR0; ECX = 1
        needs CPUID.(EAX=0DH,ECX=1):EAX[2], not offered), else EDX:EAX = XCR0."""
        st = self.km.get_state()
        if not st["GUEST_CR4"] & CR4_OSXSAVE:
            self.km.inject_exception(EV.UD)
        elif st["RCX"] & 0xFFFFFFFF:
            self.km.inject_exception(EV.GP, 0)
        else:
            xcr0 = st["XCR0"]
            self.km.set_state({"RAX": xcr0 & 0xFFFFFFFF, "RDX": xcr0 >> 32, "GUEST_RIP": st["GUEST_RIP"] + 3})
        self.note_once("XGETBV: KVM's instruction emulator cannot run it on this host; the backend completed it")

    def note_once(self, text: str) -> None:
        if text not in self.r.notes:
            self.r.notes.append(text)

    def vm_exit(self, info: ExitInfo, ex) -> None:
        """A VM exit: the recorder (observer), the handler (host code at HOST_RIP), then
        what the handler did, applied to the vCPU."""
        s, r = self.s, self.r
        view = _HostView(self.km, info, self.profile, self.vmcs, self.io)
        s.recorder(view, info)
        s.handler.handle(view)
        if view.stopped is not None or s.handler.exhausted:
            # the guest stays at the exit: its state is what the exit saved (RIP at the instruction)
            state = self.km.get_state()
            state["GUEST_RIP"] = info.guest_rip
            r.registers = R.registers_of(state)
            if s.handler.halted:
                return
            if not s.handler.exhausted:
                if info.basic == X.TRIPLE_FAULT:
                    r.outcome, r.detail = "shutdown", f"TRIPLE_FAULT exit at guest RIP {info.guest_rip:#x}"
                else:
                    r.outcome, r.detail = "stopped", s.handler.report or view.stopped
            return
        self.apply(view, info, ex)
        if view.devirtualize_at is not None:
            self.devirtualize()

    def apply(self, view: _HostView, info: ExitInfo, ex) -> None:
        km = self.km
        gprs = view.m.gprs
        changed = gprs.changed()
        writes = dict(view.writes)
        intr = writes.pop(F.VM_ENTRY_INTR_INFO_FIELD, 0)
        error_code = writes.pop(F.VM_ENTRY_EXCEPTION_ERROR_CODE, None)
        natural = None                         # RIP after KVM completes the instruction itself
        if isinstance(ex, IoExit):
            natural = info.guest_rip + info.instruction_length
            if ex.is_in:
                mask = (1 << (8 * ex.size)) - 1
                ex.reply(gprs.values[REG.RAX] & mask)
                changed.pop("RAX", None)
        elif isinstance(ex, MsrExit):
            natural = info.guest_rip + 2
            if intr & EV.INTR_INFO_VALID and intr & 0xFF == EV.GP and (intr >> 8) & 7 == EV.INTR_TYPE_HARD_EXCEPTION:
                ex.inject_gp()
                intr = 0
            elif ex.is_write:
                ex.reply()
            else:
                ex.reply(((gprs.values[REG.RDX] & 0xFFFFFFFF) << 32) | (gprs.values[REG.RAX] & 0xFFFFFFFF))
                changed.pop("RAX", None)
                changed.pop("RDX", None)
        for index, value in view.m.msrs.writes:
            if not km.write_msr(index, value):
                self.r.notes.append(f"KVM refused MSR {index:#x} = {value:#x} from the WRMSR handler")
        rip = writes.pop(F.GUEST_RIP, None)
        if view.devirtualize_at is not None:
            rip = view.devirtualize_at
        state = {("GUEST_RSP" if k == "RSP" else "GUEST_RIP" if k == "RIP" else "GUEST_RFLAGS" if k == "RFLAGS"
                  else k): v for k, v in changed.items()}
        if rip is not None and rip != natural and not (natural is not None and intr):
            state["GUEST_RIP"] = rip
        for enc, value in writes.items():
            f = F.BY_ENCODING.get(enc)
            if f is not None and f.type == "guest" and f.name in view._state:
                state[f.name] = value
            else:
                self.vmcs[enc] = value               # controls: later decisions follow them
        if state:
            km.set_state(state)
        if intr & EV.INTR_INFO_VALID:
            vector = intr & 0xFF
            km.inject_exception(vector, error_code if intr & EV.INTR_INFO_DELIVER_CODE else None)


def continue_on_kvm(s: R.Session, timeout: float) -> None:
    """Run the launched guest of session `s` on KVM until an outcome (module docstring)."""
    run = _KvmRun(s, timeout)
    try:
        if run.start():
            run.run()
        read = run.km.phys_read if run.km is not None else None
        if run.km is not None and not s.result.registers:
            s.result.registers = R.registers_of(run.km.get_state())
        R.finish(s, read)
    finally:
        if run.km is not None:
            run.km.close()
