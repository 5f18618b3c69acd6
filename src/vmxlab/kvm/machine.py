"""KvmMachine: one KVM vCPU with guest memory, driven through the processor-state
snapshot of machine/state.py and reporting VMX exits.

Interface (the same state interface as the simulated processor; the VMX adapter of
`vmxlab run --backend kvm` and the differential runner are written against it):

    m = KvmMachine(memory_size=2 << 20)       # or KvmMachine() and m.add_memory(gpa, size)
    m.phys_write(0x10000, code); m.phys_read(gpa, n)
    m.set_state({"GUEST_CR0": ..., "GUEST_CS_AR_BYTES": ..., "RAX": ..., ...})  # any subset of KEYS
    e = m.run(timeout=5.0)                    # -> an Exit (exits.py), never blocks past the timeout
    e.reason, e.qualification, e.rip          # VMX basic exit reason, SDM-format qualification
    e.reply(value)                            # IN / MMIO read / RDMSR data; MsrExit.inject_gp()
    m.get_state() -> dict                     # every key of machine/state.py KEYS
    m.inject_interrupt(vector); m.inject_exception(vector, error_code); m.inject_nmi()
    m.intercept_msrs(read=[...], write=[...]) # MSR accesses that exit (KVM's MSR filter)
    m.interrupt_window_exiting = True         # INTERRUPT_WINDOW exits, like the VMX control
    m.close()                                 # or `with KvmMachine(...) as m:`

run() enters the guest with KVM_RUN (include/uapi/linux/kvm.h) under the watchdog
(watchdog.py) and returns at the first exit the caller has to see: IO_INSTRUCTION,
EPT_VIOLATION (MMIO), MSR_READ / MSR_WRITE, HLT, TRIPLE_FAULT, INTERRUPT_WINDOW
when asked for, or a KvmReport (internal errors, other KVM exits, KVM_RUN errors,
the watchdog) -- exits.py has the table.  A timed-out run leaves the vCPU out of
KVM_RUN with a consistent state: get_state() shows where it stood, set_state() and
run() work as before.

What KVM does differently from a VMX processor, and how it shows here:
- KVM finishes the exiting instruction itself.  Until the next run(), RIP and the
  registers are KVM's view at the exit: at the instruction for exits KVM completes
  later (IN/INS, MMIO reads, RDMSR/WRMSR, REP OUTS with iterations left), and --
  on these PVM hosts, where KVM's instruction emulator runs all CPL0 code -- already
  past it for OUT/OUTS and MMIO writes.  The I/O qualification is decoded from the
  instruction bytes (iodecode.py); for an OUT, the first read of it lets KVM finish
  the instruction (KVM_RUN with immediate_exit, which runs no guest code) to learn
  whether RIP was at the instruction or past it.
- set_state() first lets KVM finish the instruction at which the guest stopped,
  so that KVM does not apply the rest of it to the new state.
- KVM holds neither pending debug exceptions nor, without an in-kernel interrupt
  controller, an activity state other than active: set_state() refuses other
  values of those keys (BadInput).  GUEST_IA32_DEBUGCTL writes are accepted and
  dropped by KVM on these hosts.

Measured on the PVM hosts (kvm_pvm, ../shared/notes/kvm.md) while building this:
- KVM_INTERRUPT delivers its vector at the next entry even with RFLAGS.IF=0; run()
  therefore hands KVM an interrupt only when the last exit reported
  ready_for_interrupt_injection, and otherwise asks for an interrupt window.
- An interrupt window is reported at KVM's next kernel-internal exit (a host timer
  tick, ~1 ms), not at the first instruction boundary where it opens; a guest that
  reaches an exit to user space first (I/O, HLT) is not interrupted before it.
- Code at CPL3 does not keep RFLAGS.IOPL (it reads 0 once the guest has run there,
  also in the image pushed on an exception), and its I/O permission is the host's,
  not the guest's: ports below 0x340 exit to user space even with IOPL=0, ports
  from 0x340 raise #GP even with IOPL=3.
- Exception frames pushed for faults at CPL3, and for an MSR access answered with
  #GP, have RFLAGS.RF=1 in the image.
- KVM_SET_MSRS keeps an IA32_PAT value with reserved memory types, drops bits 63:32
  of IA32_TSC_AUX (so set_state() refuses them, as WRMSR would), and KVM_SET_SREGS
  keeps reserved EFER bits.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import mmap
import os
import struct
import threading
import time
import weakref
from collections import deque

from ..arch import exits as X
from ..arch.events import ERROR_CODE_VECTORS, exception_name
from ..arch.msrs import EFER_LMA, X2APIC_FIRST, X2APIC_LAST
from ..arch.registers import CR0_PE, RFLAGS_DF, RFLAGS_VM
from ..errors import BadInput
from ..machine import state as S
from . import abi, convert, iodecode
from .exits import Exit, HltExit, InterruptWindowExit, IoExit, KvmReport, MmioExit, MsrExit, TripleFaultExit
from .system import KvmError, KvmUnavailable, errname, ioctl, ioctl_ulong, shared_kvm
from .watchdog import WATCHDOG, Slot

DEFAULT_TIMEOUT = 5.0
PAGE = 0x1000
MAX_GPA = 1 << 52

_u8 = struct.Struct("<B").unpack_from
_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_io = struct.Struct("<BBHIQ").unpack_from           # struct kvm_run.io
_mmio = struct.Struct("<Q8sIB").unpack_from          # struct kvm_run.mmio
_msr = struct.Struct("<B7xIIQ").unpack_from          # struct kvm_run.msr
_rdx_rip = struct.Struct("<Q96xQ").unpack_from       # kvm_run->s.regs: rdx .. rip
_monotonic = time.monotonic
_get_ident = threading.get_ident
_ioctl = fcntl.ioctl
_KVM_RUN = abi.KVM_RUN
_EINTR = _errno.EINTR
_RUN_IMMEDIATE_EXIT = abi.RUN_IMMEDIATE_EXIT
_RUN_REQUEST_INTERRUPT_WINDOW = abi.RUN_REQUEST_INTERRUPT_WINDOW
_RUN_EXIT_REASON = abi.RUN_EXIT_REASON
_RUN_IO = abi.RUN_IO_DIRECTION
_RUN_SYNC_RDX = abi.RUN_SYNC_REGS + abi.kvm_regs.rdx.offset
_KVM_EXIT_IO = abi.KVM_EXIT_IO

_QUAL_READ = X.QUAL_EPT_VIOLATION.encode(read=1)
_QUAL_WRITE = X.QUAL_EPT_VIOLATION.encode(write=1)
_QUAL_ROM = X.QUAL_EPT_VIOLATION.encode(readable=1, executable=1)

_MSR_ORDER = tuple(convert.MSR_KEYS.items())


class _Memory:
    __slots__ = ("slot", "gpa", "size", "readonly", "mm", "anchor")

    def __init__(self, slot, gpa, size, readonly, mm, anchor):
        self.slot, self.gpa, self.size, self.readonly, self.mm, self.anchor = slot, gpa, size, readonly, mm, anchor


class _Resources:
    """What a machine holds from the kernel; closed by close() or when collected."""

    def __init__(self):
        self.fds: list[int] = []
        self.maps: list = []
        self.slot: Slot | None = None

    def close(self) -> None:
        if self.slot is not None:
            WATCHDOG.unregister(self.slot)
            self.slot = None
        for fd in reversed(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for m in self.maps:
            m.anchor = None
            try:
                m.mm.close()
            except (BufferError, ValueError):
                pass
        self.maps.clear()


class KvmMachine:
    """A KVM VM with one vCPU (see the module docstring)."""

    def __init__(self, memory_size: int = 0, *, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self._window_exiting = False
        self._irq_work = False            # queued interrupts or a window to ask KVM for
        self._kvm = shared_kvm()
        self._res = res = _Resources()
        self._finalizer = weakref.finalize(self, res.close)
        try:
            self._vm_fd = self._kvm.create_vm()
            res.fds.append(self._vm_fd)
            try:     # VMX without unrestricted guest needs these pages for real mode
                ioctl_ulong(self._vm_fd, abi.KVM_SET_TSS_ADDR, abi.TSS_ADDR)
            except OSError:
                pass  # PVM and SVM have no use for them
            try:
                self._fd = fcntl.ioctl(self._vm_fd, abi.KVM_CREATE_VCPU, 0)
            except OSError as e:
                raise KvmUnavailable(f"{self._kvm.path} refuses to create a vCPU "
                                     f"(KVM_CREATE_VCPU: {errname(e.errno)})") from None
            res.fds.append(self._fd)
            self._mm = mmap.mmap(self._fd, self._kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            res.maps.append(_Memory(-1, 0, 0, False, self._mm, None))
            self._set_cpuid(self._kvm.supported_cpuid())
            self._sync = bool(self._kvm.check(abi.KVM_CAP_SYNC_REGS, self._vm_fd) & abi.KVM_SYNC_X86_REGS)
            if self._sync:
                self._mm[abi.RUN_KVM_VALID_REGS:abi.RUN_KVM_VALID_REGS + 8] = \
                    abi.KVM_SYNC_X86_REGS.to_bytes(8, "little")
            self._slot = Slot(self._mm)
            WATCHDOG.register(self._slot)
            res.slot = self._slot
        except BaseException:
            res.close()
            raise
        self._memory: list[_Memory] = []
        self._serial = 0                  # number of KVM exits so far; exits refer to theirs
        self._pending = False             # KVM has the rest of the last exiting instruction to do
        self._completion = None           # (serial, rip after, continued) of the last completion
        self._queue: deque[Exit] = deque()
        self._irq_queue: deque[int] = deque()
        self._fresh = False               # kvm_run (s.regs, ready_for_interrupt_injection) is
                                          # current: no state change since KVM's last report
        self._msr_filter_keep = None
        if memory_size:
            self.add_memory(0, memory_size)

    # ---- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        self._finalizer()
        self._fd = -1

    def __enter__(self) -> "KvmMachine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _vcpu(self, request: int, arg, what: str) -> int:
        if self._fd < 0:
            raise KvmError("the machine is closed")
        return ioctl(self._fd, request, arg, what)

    def _set_cpuid(self, entries) -> None:
        c = abi.cpuid2(len(entries))
        for i, e in enumerate(entries):
            c.entries[i] = e
        self._vcpu(abi.KVM_SET_CPUID2, c, "KVM_SET_CPUID2")

    def set_cpuid(self, entries) -> None:
        """The vCPU's CPUID table (kvm_cpuid_entry2 structures, e.g. edited copies of
        Kvm.supported_cpuid()), before the first run(): KVM refuses changes after
        KVM_RUN (KvmError).  KVM forces some feature bits on (../shared/notes/kvm.md)."""
        self._set_cpuid(entries)

    # ---- single MSRs -----------------------------------------------------------------
    def read_msr(self, index: int) -> int | None:
        """The vCPU's MSR `index` (KVM_GET_MSRS), or None when KVM does not have it."""
        m = abi.msrs(1)
        m.entries[0].index = index
        return m.entries[0].data if self._vcpu(abi.KVM_GET_MSRS, m, "KVM_GET_MSRS") == 1 else None

    def write_msr(self, index: int, value: int) -> bool:
        """Set MSR `index` (KVM_SET_MSRS, after KVM finishes a pending exiting
        instruction); False when KVM refuses the index or the value."""
        self._settle()
        self._serial += 1
        self._completion = None
        self._fresh = False
        m = abi.msrs(1)
        m.entries[0].index, m.entries[0].data = index, value
        return self._vcpu(abi.KVM_SET_MSRS, m, "KVM_SET_MSRS") == 1

    # ---- memory ----------------------------------------------------------------------
    def add_memory(self, gpa: int, size: int, *, readonly: bool = False) -> int:
        """Back guest-physical [gpa, gpa+size) with fresh zeroed host memory (a KVM
        memslot, KVM_SET_USER_MEMORY_REGION); readonly: guest writes exit as MMIO.
        Returns the slot number."""
        for name, v in (("gpa", gpa), ("size", size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"memory {name} {v!r} is not a non-negative integer")
        if size == 0 or gpa % PAGE or size % PAGE:
            raise BadInput(f"memory [{gpa:#x}, +{size:#x}) must be a non-empty range of whole 4-KiB pages")
        if gpa + size > MAX_GPA:
            raise BadInput(f"memory [{gpa:#x}, +{size:#x}) goes beyond the 52-bit physical address space")
        for m in self._memory:
            if gpa < m.gpa + m.size and m.gpa < gpa + size:
                raise BadInput(f"memory [{gpa:#x}, +{size:#x}) overlaps slot {m.slot} "
                               f"[{m.gpa:#x}, +{m.size:#x})")
        if gpa < abi.TSS_ADDR + 3 * PAGE and abi.TSS_ADDR < gpa + size:
            raise BadInput(f"memory [{gpa:#x}, +{size:#x}) overlaps the pages KVM_SET_TSS_ADDR "
                           f"reserves at {abi.TSS_ADDR:#x}")
        if readonly and not self._kvm.check(abi.KVM_CAP_READONLY_MEM, self._vm_fd):
            raise KvmUnavailable(f"{self._kvm.path} has no read-only memory slots (KVM_CAP_READONLY_MEM)")
        try:
            mm = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise BadInput(f"cannot allocate {size:#x} bytes of guest memory ({errname(e.errno)})") from None
        anchor = (ctypes.c_char * size).from_buffer(mm)
        slot = len(self._memory)
        region = abi.kvm_userspace_memory_region(slot, abi.KVM_MEM_READONLY if readonly else 0, gpa, size,
                                                 ctypes.addressof(anchor))
        mem = _Memory(slot, gpa, size, readonly, mm, anchor)
        try:
            ioctl(self._vm_fd, abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
        except KvmError:
            mem.anchor = None
            mm.close()
            raise
        self._memory.append(mem)
        self._memory.sort(key=lambda m: m.gpa)
        self._res.maps.append(mem)
        return slot

    @property
    def memory(self) -> list[tuple[int, int, bool]]:
        """(gpa, size, readonly) of each memory slot, by address."""
        return [(m.gpa, m.size, m.readonly) for m in self._memory]

    def _spans(self, gpa: int, n: int):
        if isinstance(gpa, bool) or not isinstance(gpa, int) or gpa < 0 or n < 0:
            raise BadInput(f"guest-physical address {gpa!r} is not a non-negative integer")
        end, addr = gpa + n, gpa
        while addr < end:
            for m in self._memory:
                if m.gpa <= addr < m.gpa + m.size:
                    take = min(end, m.gpa + m.size) - addr
                    yield m, addr - m.gpa, take
                    addr += take
                    break
            else:
                raise BadInput(f"guest-physical address {addr:#x} is not backed by memory "
                               f"(access [{gpa:#x}, +{n:#x}))")

    def phys_read(self, gpa: int, n: int) -> bytes:
        if type(gpa) is int and type(n) is int and n >= 0:
            for m in self._memory:        # the common case: inside one slot
                off = gpa - m.gpa
                if 0 <= off and off + n <= m.size:
                    return m.mm[off:off + n]
        return b"".join(m.mm[off:off + take] for m, off, take in self._spans(gpa, n))

    def phys_write(self, gpa: int, data: bytes) -> None:
        data = bytes(data)
        pos = 0
        for m, off, take in list(self._spans(gpa, len(data))):
            m.mm[off:off + take] = data[pos:pos + take]
            pos += take

    def translate(self, linear: int) -> int | None:
        """Guest-physical address of a linear address under the guest's current paging
        (KVM_TRANSLATE), or None when it is not mapped."""
        t = abi.kvm_translation(linear_address=linear & 0xFFFFFFFFFFFFFFFF)
        try:
            fcntl.ioctl(self._fd, abi.KVM_TRANSLATE, t, True)
        except OSError:
            return None                   # e.g. a non-canonical address
        return t.physical_address if t.valid else None

    def read_virtual(self, linear: int, n: int) -> bytes:
        """Up to n bytes from a linear address: stops at the first unmapped page or
        unbacked byte."""
        out = bytearray()
        while len(out) < n:
            addr = (linear + len(out)) & 0xFFFFFFFFFFFFFFFF
            gpa = self.translate(addr)
            if gpa is None:
                break
            take = min(n - len(out), PAGE - (addr & (PAGE - 1)))
            try:
                out += self.phys_read(gpa, take)
            except BadInput:
                break
        return bytes(out)

    # ---- state -----------------------------------------------------------------------
    def get_state(self) -> dict:
        """The vCPU as a machine/state.py snapshot: every key of KEYS."""
        out: dict = {}
        regs = abi.kvm_regs()
        self._vcpu(abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        convert.regs_to_state(regs, out)
        sregs = abi.kvm_sregs()
        self._vcpu(abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        convert.sregs_to_state(sregs, out)
        dr = abi.kvm_debugregs()
        self._vcpu(abi.KVM_GET_DEBUGREGS, dr, "KVM_GET_DEBUGREGS")
        convert.debugregs_to_state(dr, out)
        m = abi.msrs(len(_MSR_ORDER))
        for i, (_, index) in enumerate(_MSR_ORDER):
            m.entries[i].index = index
        n = self._vcpu(abi.KVM_GET_MSRS, m, "KVM_GET_MSRS")
        if n != len(_MSR_ORDER):
            raise KvmError(f"KVM_GET_MSRS read {n} of {len(_MSR_ORDER)} MSRs; "
                           f"{_MSR_ORDER[n][0]} (MSR {_MSR_ORDER[n][1]:#x}) failed")
        for i, (key, _) in enumerate(_MSR_ORDER):
            out[key] = m.entries[i].data
        out["XCR0"] = self._get_xcr0()
        ev = abi.kvm_vcpu_events()
        self._vcpu(abi.KVM_GET_VCPU_EVENTS, ev, "KVM_GET_VCPU_EVENTS")
        out["GUEST_INTERRUPTIBILITY_INFO"] = convert.interruptibility_from_events(ev)
        mp = abi.kvm_mp_state()
        self._vcpu(abi.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")
        out["GUEST_ACTIVITY_STATE"] = convert.ACTIVITY_OF_MP_STATE.get(mp.mp_state, 0)
        out["GUEST_PENDING_DBG_EXCEPTIONS"] = 0
        return {k: out[k] for k in S.KEYS}

    def _get_xcr0(self) -> int:
        x = abi.kvm_xcrs()
        self._vcpu(abi.KVM_GET_XCRS, x, "KVM_GET_XCRS")
        for i in range(min(x.nr_xcrs, abi.KVM_MAX_XCRS)):
            if x.xcrs[i].xcr == 0:
                return x.xcrs[i].value
        return 0

    def set_state(self, state: dict) -> None:
        """Load any subset of the snapshot keys; the others keep their values.

        Values are checked first (BadInput naming the key).  Control registers,
        segments and EFER go in one KVM_SET_SREGS, which KVM applies entirely or not
        at all; the other groups follow (KVM_SET_REGS, _DEBUGREGS, _MSRS, _XCRS,
        _VCPU_EVENTS, _MP_STATE).  If KVM refuses one, the groups already loaded are
        put back: a refused state changes nothing."""
        convert.check_state(state)
        self._settle()
        self._serial += 1                  # outstanding exits can no longer be answered
        self._completion = None
        self._fresh = False
        keys = state.keys()
        undo: list[tuple[int, object]] = []
        try:
            self._load(state, keys, undo)
        except BaseException:
            for request, old in reversed(undo):
                try:
                    fcntl.ioctl(self._fd, request, old, True)
                except OSError:
                    pass
            raise

    def _load(self, state: dict, keys, undo: list) -> None:
        if any(k in keys for k in convert.SREGS_KEYS):
            old = abi.kvm_sregs()
            self._vcpu(abi.KVM_GET_SREGS, old, "KVM_GET_SREGS")
            sregs = abi.kvm_sregs.from_buffer_copy(old)
            convert.sregs_from_state(sregs, state)
            why = convert.check_sregs(sregs)
            if why:
                raise BadInput(f"KVM refuses this state: {why}")
            try:
                fcntl.ioctl(self._fd, abi.KVM_SET_SREGS, sregs, True)
            except OSError as e:
                raise BadInput(f"KVM_SET_SREGS refuses the control registers, EFER or segments "
                               f"({errname(e.errno)}); CR4={sregs.cr4:#x} may set bits this vCPU's CPUID "
                               "does not allow") from None
            undo.append((abi.KVM_SET_SREGS, old))
        if any(k in keys for k in convert.REGS_KEYS):
            old = abi.kvm_regs()
            self._vcpu(abi.KVM_GET_REGS, old, "KVM_GET_REGS")
            regs = abi.kvm_regs.from_buffer_copy(old)
            convert.regs_from_state(regs, state)
            self._vcpu(abi.KVM_SET_REGS, regs, "KVM_SET_REGS")
            undo.append((abi.KVM_SET_REGS, old))
        if any(k in keys for k in convert.DEBUGREGS_KEYS):
            old = abi.kvm_debugregs()
            self._vcpu(abi.KVM_GET_DEBUGREGS, old, "KVM_GET_DEBUGREGS")
            old.flags = 0
            dr = abi.kvm_debugregs.from_buffer_copy(old)
            convert.debugregs_from_state(dr, state)
            try:
                fcntl.ioctl(self._fd, abi.KVM_SET_DEBUGREGS, dr, True)
            except OSError as e:
                raise BadInput(f"KVM_SET_DEBUGREGS refuses DR6={dr.dr6:#x} DR7={dr.dr7:#x} "
                               f"({errname(e.errno)}): bits 63:32 of DR6 and DR7 must be 0") from None
            undo.append((abi.KVM_SET_DEBUGREGS, old))
        items = [(k, idx) for k, idx in _MSR_ORDER if k in keys]
        if items:
            old = abi.msrs(len(items))
            for i, (_, idx) in enumerate(items):
                old.entries[i].index = idx
            if self._vcpu(abi.KVM_GET_MSRS, old, "KVM_GET_MSRS") != len(items):
                raise KvmError("KVM_GET_MSRS could not read the MSRs of the state")
            m = abi.msrs(len(items))
            for i, (k, idx) in enumerate(items):
                m.entries[i].index, m.entries[i].data = idx, state[k]
            n = self._vcpu(abi.KVM_SET_MSRS, m, "KVM_SET_MSRS")
            undo.append((abi.KVM_SET_MSRS, old))
            if n != len(items):
                k, idx = items[n]
                raise BadInput(f"KVM refuses {k}={state[k]:#x} (MSR {idx:#x}, KVM_SET_MSRS)")
        if "XCR0" in keys:
            old = abi.kvm_xcrs()
            self._vcpu(abi.KVM_GET_XCRS, old, "KVM_GET_XCRS")
            x = abi.kvm_xcrs(nr_xcrs=1)
            x.xcrs[0].xcr, x.xcrs[0].value = 0, state["XCR0"]
            try:
                fcntl.ioctl(self._fd, abi.KVM_SET_XCRS, x, True)
            except OSError as e:
                raise BadInput(f"KVM refuses XCR0={state['XCR0']:#x} ({errname(e.errno)}): bit 0 must be 1 "
                               "and every bit must be an XSAVE component this vCPU's CPUID offers") from None
            undo.append((abi.KVM_SET_XCRS, old))
        if "GUEST_INTERRUPTIBILITY_INFO" in keys:
            old = abi.kvm_vcpu_events()
            self._vcpu(abi.KVM_GET_VCPU_EVENTS, old, "KVM_GET_VCPU_EVENTS")
            ev = abi.kvm_vcpu_events.from_buffer_copy(old)
            convert.interruptibility_to_events(ev, state["GUEST_INTERRUPTIBILITY_INFO"])
            self._vcpu(abi.KVM_SET_VCPU_EVENTS, ev, "KVM_SET_VCPU_EVENTS")
            undo.append((abi.KVM_SET_VCPU_EVENTS, old))
        if "GUEST_ACTIVITY_STATE" in keys:      # check_state allowed only 0 (active)
            mp = abi.kvm_mp_state()
            self._vcpu(abi.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")
            if mp.mp_state != abi.KVM_MP_STATE_RUNNABLE:
                mp.mp_state = abi.KVM_MP_STATE_RUNNABLE
                self._vcpu(abi.KVM_SET_MP_STATE, mp, "KVM_SET_MP_STATE")

    def _settle(self) -> None:
        """Let KVM finish the instruction the last exit stopped in (KVM would finish it
        on the next KVM_RUN, against whatever state was loaded meanwhile)."""
        if self._queue:
            raise BadInput(f"{len(self._queue)} exit(s) of the current instruction are still to be taken "
                           "with run() before the state can be changed")
        if self._pending:
            continued = self._complete()
            if continued is not None:
                self._queue.append(continued)
                raise BadInput(f"the guest stopped inside a REP string I/O instruction at rip {continued.rip:#x} "
                               "with iterations left; take its exits with run() before changing the state")

    # ---- events ----------------------------------------------------------------------
    def inject_interrupt(self, vector: int) -> None:
        """An external interrupt with this vector, delivered through the guest's IDT as
        soon as the guest can take it (RFLAGS.IF=1, no STI/MOV SS blocking): KVM_INTERRUPT
        when KVM's interrupt window is open.  Interrupts queue in order."""
        if isinstance(vector, bool) or not isinstance(vector, int) or not 32 <= vector <= 255:
            raise BadInput(f"external interrupt vector {vector!r} is not in 32..255")
        self._irq_queue.append(vector)
        self._irq_work = True

    @property
    def interrupt_window_exiting(self) -> bool:
        """Like the VMX control "interrupt-window exiting": run() returns an
        INTERRUPT_WINDOW exit when the guest can take an external interrupt."""
        return self._window_exiting

    @interrupt_window_exiting.setter
    def interrupt_window_exiting(self, on: bool) -> None:
        self._window_exiting = bool(on)
        self._irq_work = True

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """A hardware exception delivered at the next run() (KVM_SET_VCPU_EVENTS,
        exception.injected), with an error code for the vectors that push one (SDM Vol.
        3A "Exception and Interrupt Reference"; default 0).  For #PF set CR2 first."""
        if isinstance(vector, bool) or not isinstance(vector, int) or not 0 <= vector <= 31 or vector in (2,):
            raise BadInput(f"exception vector {vector!r} is not 0..31 (NMI: inject_nmi())")
        has_code = vector in ERROR_CODE_VECTORS
        if error_code is not None and not has_code:
            raise BadInput(f"{exception_name(vector)} (vector {vector}) pushes no error code")
        if error_code is not None and (not isinstance(error_code, int) or not 0 <= error_code <= 0xFFFFFFFF):
            raise BadInput(f"error code {error_code!r} does not fit in 32 bits")
        ev = abi.kvm_vcpu_events()
        self._vcpu(abi.KVM_GET_VCPU_EVENTS, ev, "KVM_GET_VCPU_EVENTS")
        ev.exception.injected, ev.exception.pending = 1, 0
        ev.exception.nr, ev.exception.has_error_code = vector, int(has_code)
        ev.exception.error_code = error_code or 0
        self._vcpu(abi.KVM_SET_VCPU_EVENTS, ev, "KVM_SET_VCPU_EVENTS")

    def inject_nmi(self) -> None:
        """An NMI, delivered when NMIs are not blocked (KVM_NMI)."""
        self._vcpu(abi.KVM_NMI, 0, "KVM_NMI")

    def _prepare_interrupts(self) -> None:
        """Before KVM_RUN: hand KVM the next queued interrupt if the last exit said it
        can take one now (kvm_run->ready_for_interrupt_injection: IF=1, no interrupt
        shadow, nothing pending), else ask for an interrupt-window exit.  This is the
        protocol of Documentation/virt/kvm/api.rst for a user-space interrupt
        controller; PVM hosts deliver a KVM_INTERRUPT vector even with IF=0, so
        the protocol is followed strictly and a flag older than the last state change
        does not count."""
        mm = self._mm
        if self._irq_queue and self._fresh and mm[abi.RUN_READY_FOR_INTERRUPT_INJECTION]:
            try:
                fcntl.ioctl(self._fd, abi.KVM_INTERRUPT, abi.kvm_interrupt(self._irq_queue[0]), True)
            except OSError as e:
                if e.errno != _errno.EEXIST:      # EEXIST: KVM still holds the previous one
                    raise KvmError(f"KVM_INTERRUPT failed ({errname(e.errno)})") from None
            else:
                self._irq_queue.popleft()
        want = bool(self._irq_queue) or self._window_exiting
        mm[_RUN_REQUEST_INTERRUPT_WINDOW] = 1 if want else 0
        self._irq_work = want

    # ---- MSR interception --------------------------------------------------------------
    def intercept_msrs(self, read=(), write=(), *, unknown: bool = False) -> None:
        """Make guest RDMSR of the MSRs in `read` and WRMSR of those in `write` exit
        (MSR_READ / MSR_WRITE), like MSR-bitmap bits set to 1; unknown=True also exits
        on MSRs KVM does not implement (else they raise #GP in the guest).  Uses
        KVM_CAP_X86_USER_SPACE_MSR and KVM_X86_SET_MSR_FILTER (default allow, with
        deny bitmaps for the listed MSRs).  A new call replaces the previous sets."""
        for cap, name in ((abi.KVM_CAP_X86_USER_SPACE_MSR, "KVM_CAP_X86_USER_SPACE_MSR"),
                          (abi.KVM_CAP_X86_MSR_FILTER, "KVM_CAP_X86_MSR_FILTER")):
            if not self._kvm.check(cap, self._vm_fd):
                raise KvmUnavailable(f"{self._kvm.path} lacks {name}, which MSR interception needs")
        f = abi.kvm_msr_filter(flags=abi.KVM_MSR_FILTER_DEFAULT_ALLOW)
        keep = []
        n = 0
        for flag, indices in ((abi.KVM_MSR_FILTER_READ, read), (abi.KVM_MSR_FILTER_WRITE, write)):
            for base, bits in _filter_ranges(indices):
                if n == abi.KVM_MSR_FILTER_MAX_RANGES:
                    raise BadInput(f"the MSRs to intercept need more than {abi.KVM_MSR_FILTER_MAX_RANGES} "
                                   "filter ranges; group them more closely")
                bitmap = (ctypes.c_uint8 * len(bits))(*bits)
                keep.append(bitmap)
                r = f.ranges[n]
                r.flags, r.nmsrs, r.base, r.bitmap = flag, len(bits) * 8, base, ctypes.addressof(bitmap)
                n += 1
        mask = abi.KVM_MSR_EXIT_REASON_FILTER | (abi.KVM_MSR_EXIT_REASON_UNKNOWN if unknown else 0)
        cap = abi.kvm_enable_cap(cap=abi.KVM_CAP_X86_USER_SPACE_MSR)
        cap.args[0] = mask
        ioctl(self._vm_fd, abi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)")
        ioctl(self._vm_fd, abi.KVM_X86_SET_MSR_FILTER, f, "KVM_X86_SET_MSR_FILTER")
        self._msr_filter_keep = keep

    # ---- running -----------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> Exit:
        """Run the guest until the next exit the caller has to see (at most `timeout`
        seconds, default self.timeout; then a KvmReport named WATCHDOG)."""
        if self._queue:
            return self._queue.popleft()
        fd = self._fd
        if fd < 0:
            raise KvmError("the machine is closed")
        limit = self.timeout if timeout is None else timeout
        deadline = _monotonic() + limit
        slot, mm = self._slot, self._mm
        while True:
            if self._irq_work:
                self._prepare_interrupts()
            # watchdog.Slot.arm(), inlined: this is the hot path
            mm[_RUN_IMMEDIATE_EXIT] = 0
            slot.tid = _get_ident()
            slot.generation = generation = slot.generation + 1
            slot.deadline = deadline
            try:
                _ioctl(fd, _KVM_RUN, 0)
            except OSError as e:
                if e.errno == _EINTR:
                    self._pending = False
                    if slot.fired == generation or _monotonic() >= deadline:
                        return self._watchdog_report(limit)
                    continue                  # a signal meant for someone else: go on
                return self._report(None, f"KVM_RUN failed ({errname(e.errno)})", errno=e.errno)
            finally:
                slot.deadline = 0.0
            self._serial += 1
            self._fresh = True
            code = _u32(mm, _RUN_EXIT_REASON)[0]
            if code == _KVM_EXIT_IO:
                return self._io_exit(mm)
            ex = self._exit(code)
            if ex is not None:
                return ex

    def _io_exit(self, mm) -> IoExit:
        self._pending = True
        direction, size, port, count, offset = _io(mm, _RUN_IO)
        if self._sync:
            rdx, rip = _rdx_rip(mm, _RUN_SYNC_RDX)
        else:
            regs = abi.kvm_regs()
            self._vcpu(abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
            rdx, rip = regs.rdx, regs.rip
        serial = self._serial
        if direction:                      # KVM_EXIT_IO_OUT
            first = IoExit(rip, serial, self, port, size, False, rdx, offset, mm[offset:offset + size])
            for i in range(1, count):
                o = offset + i * size
                self._queue.append(IoExit(rip, serial, self, port, size, False, rdx, o, mm[o:o + size], first))
        else:
            mm[offset:offset + size * count] = b"\xff" * (size * count)     # unanswered: all ones
            first = IoExit(rip, serial, self, port, size, True, rdx, offset, None)
            for i in range(1, count):
                self._queue.append(IoExit(rip, serial, self, port, size, True, rdx, offset + i * size, None, first))
        return first

    def _complete(self) -> Exit | None:
        """KVM_RUN with immediate_exit: KVM finishes the pending instruction and returns
        without running guest code (-EINTR), or reports the next exit the same
        instruction makes (a REP string I/O instruction with iterations left)."""
        slot, mm = self._slot, self._mm
        serial = self._serial
        slot.arm(_monotonic() + self.timeout)
        mm[abi.RUN_IMMEDIATE_EXIT] = 1
        try:
            _ioctl(self._fd, abi.KVM_RUN, 0)
        except OSError as e:
            err = e.errno
        else:
            err = 0
        finally:
            slot.deadline = 0.0
            mm[abi.RUN_IMMEDIATE_EXIT] = 0
        if err == _errno.EINTR:
            self._pending = False
            self._fresh = True
            self._completion = (serial, self._regs_now().rip, False)
            return None
        if err:
            raise KvmError(f"KVM_RUN (completing the exiting instruction) failed ({errname(err)})")
        self._serial += 1
        self._fresh = True
        ex = self._exit(_u32(mm, abi.RUN_EXIT_REASON)[0])
        self._completion = (serial, None, True)
        return ex

    def _rip(self) -> int:
        if self._sync:
            return _u64(self._mm, abi.RUN_SYNC_RIP)[0]
        regs = abi.kvm_regs()
        self._vcpu(abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs.rip

    def _exit(self, code: int) -> Exit | None:
        mm = self._mm
        if code == abi.KVM_EXIT_IO:
            return self._io_exit(mm)
        if code == abi.KVM_EXIT_MMIO:
            self._pending = True
            gpa, data, length, is_write = _mmio(mm, abi.RUN_MMIO_PHYS_ADDR)
            qual = _QUAL_WRITE if is_write else _QUAL_READ
            for m in self._memory:
                if m.readonly and m.gpa <= gpa < m.gpa + m.size:
                    qual |= _QUAL_ROM      # mapped readable and executable, not writable
            if is_write:
                data = data[:length]
            else:
                data = None
                mm[abi.RUN_MMIO_DATA:abi.RUN_MMIO_DATA + length] = b"\xff" * length
            return MmioExit(self._rip(), self._serial, self, mm, gpa, length, bool(is_write), data, qual)
        if code == abi.KVM_EXIT_HLT:
            self._pending = False
            return HltExit(self._rip(), self._serial)
        if code in (abi.KVM_EXIT_X86_RDMSR, abi.KVM_EXIT_X86_WRMSR):
            self._pending = True
            _, reason, index, data = _msr(mm, abi.RUN_MSR_ERROR)
            mm[abi.RUN_MSR_ERROR] = 1          # unanswered: #GP
            is_write = code == abi.KVM_EXIT_X86_WRMSR
            return MsrExit(is_write, self._rip(), self._serial, self, mm, index,
                           data if is_write else None, reason)
        if code == abi.KVM_EXIT_SHUTDOWN:
            self._pending = False
            return TripleFaultExit(self._rip(), self._serial)
        if code == abi.KVM_EXIT_IRQ_WINDOW_OPEN:
            self._pending = False
            self._irq_work = True              # the queued interrupt goes in on the next entry
            if self._window_exiting:
                return InterruptWindowExit(self._rip(), self._serial)
            return None                        # the queued interrupt goes in on the next entry
        self._pending = False
        return self._report(code)

    # ---- reports -----------------------------------------------------------------------
    def _report(self, code: int | None, message: str | None = None, **kw) -> KvmReport:
        mm = self._mm
        try:
            rip = self._rip() if code is not None else self._get_rip()
        except KvmError:
            rip = 0
        extra = {}
        if code == abi.KVM_EXIT_INTERNAL_ERROR:
            suberror, ndata = _u32(mm, abi.RUN_INTERNAL_SUBERROR)[0], _u32(mm, abi.RUN_INTERNAL_NDATA)[0]
            data = [_u64(mm, abi.RUN_INTERNAL_DATA + 8 * i)[0] for i in range(min(ndata, 16))]
            insn = None
            if (suberror == abi.KVM_INTERNAL_ERROR_EMULATION and ndata >= 3
                    and data[0] & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES):
                size = min(mm[abi.RUN_EMULATION_FAILURE_INSN_SIZE], 15)
                insn = bytes(mm[abi.RUN_EMULATION_FAILURE_INSN_BYTES:abi.RUN_EMULATION_FAILURE_INSN_BYTES + size])
            name = abi.INTERNAL_ERRORS.get(suberror, "unknown suberror")
            message = f"KVM_EXIT_INTERNAL_ERROR (17) suberror {suberror}: {name}, rip {rip:#x}"
            if insn is not None:
                message += f", instruction bytes {insn.hex(' ')}"
            message += f"; data [{', '.join(hex(d) for d in data)}]"
            extra = dict(suberror=suberror, data=data, insn_bytes=insn)
        elif code == abi.KVM_EXIT_UNKNOWN:
            hw = _u64(mm, abi.RUN_HW_EXIT_REASON)[0]
            message = f"KVM_EXIT_UNKNOWN (0): hardware exit reason {hw:#x}, rip {rip:#x}"
            extra = dict(hardware_reason=hw)
        elif code == abi.KVM_EXIT_FAIL_ENTRY:
            hw = _u64(mm, abi.RUN_FAIL_ENTRY_REASON)[0]
            cpu = _u32(mm, abi.RUN_FAIL_ENTRY_CPU)[0]
            message = (f"KVM_EXIT_FAIL_ENTRY (9): hardware entry failure reason {hw:#x} on cpu {cpu}, "
                       f"rip {rip:#x}")
            extra = dict(hardware_reason=hw)
        elif code == abi.KVM_EXIT_SYSTEM_EVENT:
            kind, ndata = _u32(mm, abi.RUN_SYSTEM_EVENT_TYPE)[0], _u32(mm, abi.RUN_SYSTEM_EVENT_NDATA)[0]
            data = [_u64(mm, abi.RUN_SYSTEM_EVENT_DATA + 8 * i)[0] for i in range(min(ndata, 16))]
            message = (f"KVM_EXIT_SYSTEM_EVENT (24): {abi.SYSTEM_EVENTS.get(kind, kind)}, "
                       f"data [{', '.join(hex(d) for d in data)}], rip {rip:#x}")
            extra = dict(data=data)
        elif code == abi.KVM_EXIT_DEBUG:
            exc, pc = _u32(mm, abi.RUN_DEBUG_EXCEPTION)[0], _u64(mm, abi.RUN_DEBUG_PC)[0]
            dr6, dr7 = _u64(mm, abi.RUN_DEBUG_DR6)[0], _u64(mm, abi.RUN_DEBUG_DR7)[0]
            message = f"KVM_EXIT_DEBUG (4): exception {exc} at pc {pc:#x}, dr6 {dr6:#x} dr7 {dr7:#x}"
        elif code is not None and message is None:
            message = f"{abi.EXIT_NAMES.get(code, 'unknown KVM exit')} ({code}) at rip {rip:#x}: no VMX exit for it"
        elif code is None:
            message = f"{message}, rip {rip:#x}"
        extra.update(kw)
        return KvmReport(code, rip, self._serial, message, **extra)

    def _get_rip(self) -> int:
        regs = abi.kvm_regs()
        self._vcpu(abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs.rip

    def _watchdog_report(self, limit: float) -> KvmReport:
        rip = self._get_rip()
        return KvmReport(abi.KVM_EXIT_INTR, rip, self._serial,
                         f"WATCHDOG: KVM_RUN did not reach an exit within {limit:g} s and was stopped "
                         f"(KVM_EXIT_INTR) at rip {rip:#x}; the guest may livelock inside KVM "
                         "(e.g. VMCALL at CPL0 on PVM hosts)", watchdog=True)

    # ---- the I/O instruction behind an IO exit ------------------------------------------
    def _decode_io(self, ex: IoExit) -> None:
        """Fill ex._insn, ex._address, ex._note (IoExit.qualification and friends).

        Where RIP stands at a KVM_EXIT_IO (arch/x86/kvm/x86.c):
        - IN/INS: at the instruction; KVM finishes it on the next KVM_RUN with the data.
        - OUT on the fast path (kvm_fast_pio, VMX/SVM hardware): at the instruction;
          KVM skips it on the next KVM_RUN (complete_fast_pio_out).
        - OUT/OUTS through the instruction emulator (all I/O on PVM hosts; string I/O
          everywhere): already where the guest resumes -- past a retired OUT/OUTS,
          or on a REP OUTS that still has iterations to run (or is to see RCX=0).
        Letting KVM complete (KVM_RUN with immediate_exit, no guest code) separates
        the first case: RIP moves.  Otherwise the bytes decide: a matching REP OUTS at
        RIP, or an OUT/OUTS ending at RIP.  When both fit (a retired OUT/OUTS right
        before a REP OUTS to the same port), the data decides: memory at [RSI-size]
        for OUTS, AL/AX/EAX for OUT; a tie is taken as the REP OUTS, with a note."""
        if ex._serial != self._serial and (self._completion is None or self._completion[0] != ex._serial):
            raise RuntimeError("the qualification of an I/O exit is decoded from the guest at its exit: "
                               "read it before the next run() or set_state()")
        sregs = abi.kvm_sregs()
        self._vcpu(abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        if not ex.is_in and (self._completion is None or self._completion[0] != ex._serial):
            continued = self._complete()
            if continued is not None:
                self._queue.append(continued)
        regs = self._regs_now()
        if not sregs.cr0 & CR0_PE or regs.rflags & RFLAGS_VM:
            mode = 16
        elif sregs.efer & EFER_LMA and sregs.cs.l:
            mode = 64
        else:
            mode = 32 if sregs.cs.db else 16
        cs_base = 0 if mode == 64 else sregs.cs.base
        code = self.read_virtual(cs_base + ex.rip - 2, 17)      # 2 bytes before RIP, 15 from it
        if len(code) < 2:                                         # RIP-2 on an unmapped page
            code = b"\0\0" + self.read_virtual(cs_base + ex.rip, 15)
        here = iodecode.decode(code[2:], mode)
        here_ok = iodecode.matches(here, ex.is_in, ex.size, ex.port, ex.rdx)
        ex._decoded = True
        if ex.is_in:
            if here_ok:
                ex._insn, ex._address, ex._note = here, ex.rip, None
            else:
                ex._insn, ex._address, ex._note = None, None, f"no matching IN/INS at rip {ex.rip:#x}; bits 4-6 left 0"
            return
        _, rip_after, continued = self._completion
        if continued or rip_after != ex.rip:             # the fast path: RIP was at the OUT
            if here_ok:
                ex._insn, ex._address, ex._note = here, ex.rip, None
            else:
                ex._insn, ex._address, ex._note = None, None, f"no matching OUT at rip {ex.rip:#x}; bits 4-6 left 0"
            return
        rep_here = here if here_ok and here.rep else None
        retired, note = iodecode.decode_retired_out(code[:2], ex.size, ex.port, ex.rdx)
        if rep_here is not None and retired is not None:
            mask = (1 << (8 * ex.size)) - 1
            step = -ex.size if not regs.rflags & RFLAGS_DF else ex.size
            rsi_mask = (1 << rep_here.address_size) - 1
            source = self.read_virtual(self._segment_base(sregs, rep_here.segment, mode)
                                       + ((regs.rsi + step) & rsi_mask), ex.size)
            from_memory = source == ex._data
            from_rax = ex._data == (regs.rax & mask).to_bytes(ex.size, "little")
            retired_fits = from_memory if retired.string else from_rax
            if retired_fits and not from_memory:
                rep_here = None
            else:
                note = ("an OUT/OUTS to the same port ends where this REP OUTS starts and the data fits "
                        "both; taken as the REP OUTS") if retired_fits else None
        if rep_here is not None:
            ex._insn, ex._address, ex._note = rep_here, ex.rip, note
        elif retired is not None:
            ex._insn, ex._address, ex._note = retired, None, note
        else:
            ex._insn, ex._address, ex._note = None, None, f"no OUT/OUTS at or just before rip {ex.rip:#x}; bits 4-6 left 0"

    def _regs_now(self) -> abi.kvm_regs:
        """The registers as they are now: kvm_run->s.regs (KVM stores them at the end of
        every KVM_RUN, -EINTR included) unless a state change came after."""
        if self._sync and self._fresh:
            return abi.kvm_regs.from_buffer_copy(self._mm, abi.RUN_SYNC_REGS)
        regs = abi.kvm_regs()
        self._vcpu(abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    @staticmethod
    def _segment_base(sregs, segment: int | None, mode: int) -> int:
        name = ("es", "cs", "ss", "ds", "fs", "gs")[segment if segment is not None else 3]
        if mode == 64 and name not in ("fs", "gs"):
            return 0
        return getattr(sregs, name).base


def _filter_ranges(indices) -> list[tuple[int, list[int]]]:
    """(base, bitmap bytes) ranges of a KVM MSR filter that deny exactly `indices`
    (bit clear = deny in kvm_msr_filter_range.bitmap) and allow the rest."""
    idx = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 0xFFFFFFFF:
            raise BadInput(f"MSR index {i!r} is not a 32-bit number")
        if X2APIC_FIRST <= i <= X2APIC_LAST:
            raise BadInput(f"MSR {i:#x} is an x2APIC register, which KVM's MSR filter does not cover")
        idx.add(i)
    span = abi.KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8
    out = []
    for i in sorted(idx):
        if out and i - out[-1][0] < span:
            base, members = out[-1]
            members.append(i)
        else:
            out.append((i, [i]))
    ranges = []
    for base, members in out:
        nbits = members[-1] - base + 1
        bits = [0xFF] * ((nbits + 7) // 8)
        for i in members:
            bits[(i - base) // 8] &= ~(1 << ((i - base) % 8)) & 0xFF
        ranges.append((base, bits))
    return ranges
