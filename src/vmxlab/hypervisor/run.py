"""`vmxlab run IMAGE`: a guest image virtualized by the seed's hypervisor, from its entry.

The flow is the demo's (bluepill.py) with the image as the kernel's workload:
1. the built-in kernel boots on the simulated processor to its "load driver" point,
   with `workload_ptr` = the image's entry; the image is copied into memory
   (image.py: load address, ELF rules);
2. the hypervisor loads: VMXON and the seed's 16 VMCS setup steps, then the command
   line's edits (--set / --or / --andnot, step 17), then the VM-entry checks
   (checks/, every violation);
3. VMLAUNCH: the kernel continues as a guest and calls the image, whose exits go to
   the same handlers (handlers.ExitHandler) -- on the simulated processor, or
   (backend "kvm", kvm/run.py) on /dev/kvm after the VM entry;
4. the run ends with an outcome (OUTCOMES) and the final guest registers.

Exits are recorded in order with the VM-exit information fields the host reads
(Intel SDM Vol. 3C "Basic VM-Exit Information", "Information for VM Exits Due to
Vectored Events", "Information for VM Exits Due to Instruction Execution"): exit
reason, exit qualification, guest RIP, VM-exit instruction length, VM-exit
instruction information, guest-linear and guest-physical address, VM-exit
interruption information and error code, IDT-vectoring information and error code.

Budgets: at most `max_exits` exits are handled: the next one is neither recorded
nor handled and the run stops there ("budget exhausted"); `timeout` bounds the
virtualized run in seconds.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from ..arch import exits as X
from ..arch import fields as F
from ..arch.events import exception_name
from ..caps import load as load_profile
from ..checks import check
from ..errors import BadInput
from ..machine.events import MachineNotImplemented
from ..machine.runloop import MachineError, StopReason
from ..vmx.cpu import VmxAbort, VmxFail, VmxFault
from . import image as IMG
from .bluepill import boot_to_load_point, load_hypervisor
from .handlers import ExitHandler, kvm_exit_line
from .processor import ProbeFault

DEFAULT_MAX_EXITS = 100_000
DEFAULT_TIMEOUT = 30.0
BACKENDS = ("sim", "kvm")

OUTCOMES = {
    "halted": "the guest halted: HLT (or wait-for-SIPI) with nothing that can wake the processor, or a HLT exit",
    "devirtualized": "the guest made the unload hypercall (VMCALL RAX=0x564D5802), the hypervisor left "
                     "with VMXOFF and the guest finished natively",
    "shutdown": "triple fault: a TRIPLE_FAULT exit (reason 2), or shutdown after devirtualization",
    "crashed": "the guest took an exception the kernel treats as fatal: its handler printed it and halted",
    "entry failure": "VMLAUNCH ended in a VM-entry failure (exit reason with bit 31 set: 33 invalid "
                     "guest state, 34 MSR loading)",
    "vmfail": "VMLAUNCH failed: VMfailInvalid or VMfailValid with a VM-instruction error number",
    "budget exhausted": "more than --max-exits exits, or --timeout seconds",
    "stopped": "the hypervisor stopped the run at an exit it does not handle (reason in the detail)",
    "error": "the processor, the driver or KVM reported an error (in the detail)",
}
SUCCESS = ("halted", "devirtualized")
REGISTERS = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13",
             "R14", "R15", "RIP", "RFLAGS", "CR0", "CR2", "CR3", "CR4", "IA32_EFER", "CS", "SS")
_STATE_KEY = {"RSP": "GUEST_RSP", "RIP": "GUEST_RIP", "RFLAGS": "GUEST_RFLAGS", "CR0": "GUEST_CR0",
              "CR3": "GUEST_CR3", "CR4": "GUEST_CR4", "IA32_EFER": "GUEST_IA32_EFER",
              "CS": "GUEST_CS_SELECTOR", "SS": "GUEST_SS_SELECTOR"}
_FATAL_VECTORS = [v for v in range(32) if v not in (1, 2, 3, 4)]    # kernel.asm: these halt
EDIT_OPS = ("set", "or", "andnot")


@dataclass
class RunResult:
    image: str
    kind: str
    entry: int
    segments: list = field(default_factory=list)       # (address, file bytes, memory bytes)
    backend: str = "sim"
    profile: str = ""
    edits: list = field(default_factory=list)          # (field, op, value, resulting value)
    check: object = None                               # checks.Result, every violation
    launch: str = ""
    launch_error: int | None = None
    console: str = ""
    exits: list = field(default_factory=list)          # exit_record() dicts, in order
    trace: list = field(default_factory=list)          # kvm_exit lines (trace=True)
    outcome: str = ""
    detail: str = ""
    registers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)          # what the backend could not do as VMX would
    seconds: float = 0.0
    max_exits: int = DEFAULT_MAX_EXITS
    timeout: float = DEFAULT_TIMEOUT

    @property
    def ok(self) -> bool:
        return self.outcome in SUCCESS

    @property
    def violations(self) -> list:
        return list(self.check.violations) if self.check is not None else []


# ---- edits ----------------------------------------------------------------------------------------
def parse_edit(op: str, text: str) -> tuple[str, str, int]:
    """'FIELD=VALUE' of --set (op 'set'), --or, --andnot -> (Linux field name, op, value).
    FIELD: a Linux name, SDM name, seed alias or encoding; VALUE: an integer (0x.., 0b..,
    _ separators), within the field's width.  BadInput otherwise."""
    if op not in EDIT_OPS:
        raise BadInput(f"unknown VMCS edit operation {op!r} ({', '.join(EDIT_OPS)})")
    name, sep, value_text = text.partition("=")
    if not sep or not name.strip() or not value_text.strip():
        raise BadInput(f"--{op} {text!r}: expected FIELD=VALUE (e.g. --{op} CPU_BASED_VM_EXEC_CONTROL=0x80)")
    f = F.lookup(name.strip())
    if f is None:
        raise BadInput(f"--{op} {text}: unknown VMCS field {name.strip()!r}")
    try:
        value = int(value_text.strip().replace("_", ""), 0)
    except ValueError:
        raise BadInput(f"--{op} {text}: {value_text.strip()!r} is not a number") from None
    width = {"natural": 64}.get(f.width) or int(f.width)
    if value < 0 or value > f.mask:
        raise BadInput(f"--{op} {text}: value {value:#x} does not fit {f.name} ({width} bits)")
    return f.name, op, value


def _check_edits(profile, edits) -> None:
    for name, op, _ in edits:
        f = F.by_name(name)
        if not profile.field_supported(f):
            raise BadInput(f"--{op} {name}: the field does not exist on {profile.name} (VMWRITE would fail "
                           "with VMfailValid 12)")
        if f.type == "read-only" and not profile.vmwrite_any_field:
            raise BadInput(f"--{op} {name}: a read-only VM-exit information field; {profile.name} does not allow "
                           "VMWRITE to it (IA32_VMX_MISC bit 29 is 0: VMfailValid 13)")


# ---- exits ------------------------------------------------------------------------------------------
def exit_record(e) -> dict:
    """The VM-exit information of one exit (vmx.cpu.ExitInfo) as a record."""
    return {"reason": e.basic, "name": e.name, "exit_reason": e.reason, "entry_failure": e.entry_failure,
            "qualification": e.qualification, "guest_rip": e.guest_rip,
            "instruction_length": e.instruction_length, "instruction_info": e.instruction_info,
            "guest_linear_address": e.guest_linear, "guest_physical_address": e.guest_physical,
            "intr_info": e.intr_info, "intr_error_code": e.intr_error_code,
            "idt_vectoring_info": e.idt_vectoring_info, "idt_vectoring_error_code": e.idt_vectoring_error_code}


class RunHandler(ExitHandler):
    """The seed's exit handlers (ExitHandler), plus what a run needs: a HLT exit (the
    "HLT exiting" control, SDM Vol. 3C "Instructions That Cause VM Exits
    Conditionally") ends the run as "halted", and an exit beyond the budget is left
    unhandled (the run stops there)."""

    def __init__(self):
        super().__init__()
        self.halted = False
        self.exhausted = False

    def handle(self, cpu) -> None:
        if self.exhausted:
            return
        super().handle(cpu)

    def on_hlt(self, cpu) -> None:
        self.halted = True
        self.report = "HLT exit: the guest executed HLT"
        cpu.stop(self.report)

    def on_monitor_trap_flag(self, cpu) -> None:
        """MTF exits (`--or CPU_BASED_VM_EXEC_CONTROL=0x8000000`): resume as is -- the
        guest is single-stepped, one exit per instruction (`--trace` lists them)."""


class ExitRecorder:
    """Observer (cpu.observers): records every exit in order, stops the run at the one
    beyond the budget, and makes kvm_exit trace lines when asked."""

    def __init__(self, handler: RunHandler, max_exits: int, trace: bool = False):
        self.handler, self.max_exits, self.trace = handler, max_exits, trace
        self.exits: list[dict] = []
        self.lines: list[str] = []

    def __call__(self, cpu, exit) -> None:
        if len(self.exits) >= self.max_exits:
            self.handler.exhausted = True
            cpu.stop(f"more than {self.max_exits} VM exits (--max-exits)")
            return
        self.exits.append(exit_record(exit))
        if self.trace:
            self.lines.append(kvm_exit_line(exit))


# ---- the session: boot, load, launch ------------------------------------------------------------------
@dataclass
class Session:
    """The system at VMLAUNCH, for the backends."""
    profile: object
    image: IMG.Image
    m: object
    cpu: object
    sc: object
    handler: RunHandler
    recorder: ExitRecorder
    result: RunResult


def _image_of(image) -> IMG.Image:
    if isinstance(image, IMG.Image):
        return image
    if isinstance(image, (bytes, bytearray)):
        return IMG.parse(bytes(image))
    return IMG.read(str(image))


def run_image(image, backend: str = "sim", cpu_profile: str | None = None, edits=(), trace: bool = False,
              max_exits: int = DEFAULT_MAX_EXITS, timeout: float = DEFAULT_TIMEOUT) -> RunResult:
    """Run `image` (an image.Image, a file path, or the bytes of a flat/ELF image)
    under the hypervisor.  edits: (field, 'set'|'or'|'andnot', value) as parse_edit
    returns them.  BadInput for bad input (image, edits, profile, budgets, a missing
    /dev/kvm); every other problem is in the result's outcome."""
    if backend not in BACKENDS:
        raise BadInput(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    if isinstance(max_exits, bool) or not isinstance(max_exits, int) or max_exits < 0:
        raise BadInput(f"--max-exits {max_exits!r} is not a non-negative integer")
    if not isinstance(timeout, (int, float)) or not timeout > 0 or timeout != timeout or timeout == float("inf"):
        raise BadInput(f"--timeout {timeout!r} is not a positive number of seconds")
    img = _image_of(image)
    profile = load_profile(cpu_profile)
    edits = list(edits)
    _check_edits(profile, edits)
    kvm_backend = None
    if backend == "kvm":
        # the one call from this layer into kvm/ (below it in DESIGN.md's list): the
        # backend is chosen here; kvm/run.py continues the session on /dev/kvm
        from ..kvm import run as kvm_backend
        kvm_backend.preflight()                    # KvmUnavailable (BadInput) before any work
    result = RunResult(img.name, img.kind, img.entry, [(s.address, len(s.data), s.memsz) for s in img.segments],
                       backend, profile.name, max_exits=max_exits, timeout=float(timeout))
    session = _prepare(profile, img, edits, trace, max_exits, result)
    if session is None:
        return result
    if not _launch(session):
        finish(session, None)
        return result
    if kvm_backend is not None:
        kvm_backend.continue_on_kvm(session, timeout)
    else:
        t0 = time.perf_counter()
        try:
            stop = session.cpu.run(time_budget=timeout)
        except (MachineError, MachineNotImplemented, VmxAbort) as e:
            stop = None
            result.outcome, result.detail = "error", f"the simulated processor stopped: {type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - t0
        if stop is not None:
            _classify_sim(session, stop)
        finish(session, session.m.mem.read)
    return result


def _prepare(profile, img, edits, trace, max_exits, result) -> Session | None:
    m, cpu, sc, stop = boot_to_load_point(profile, workload=img.entry)
    if stop.reason != StopReason.BREAKPOINT:
        result.outcome, result.detail = "error", f"the kernel did not reach the load point: {stop}"
        result.console = m.uart.text()
        return None
    img.load(m.load)
    handler = RunHandler()
    recorder = ExitRecorder(handler, max_exits, trace)
    cpu.observers.append(recorder)
    result.exits, result.trace = recorder.exits, recorder.lines
    session = Session(profile, img, m, cpu, sc, handler, recorder, result)
    try:
        setup, _ = load_hypervisor(m, cpu, sc, handler=handler, edits=edits)
    except ProbeFault as e:
        result.outcome, result.detail = "error", f"the driver faulted: {e.what} raised vector {e.vector}"
        result.console = m.uart.text()
        return None
    applied = [w.value for w in setup.writes if w.step == 17]          # one VMWRITE per edit, in order
    result.edits = [(name, op, value, written) for (name, op, value), written in zip(edits, applied)]
    result.check = check(cpu.vmx.current_vmcs, profile,
                         memory=lambda a, n: m.mem.read(a, n) if m.mem.contains(a, n) else None,
                         all=True, vmcs_pointer=cpu.vmx.current)
    return session


def _launch(s: Session) -> bool:
    """VMLAUNCH from the driver ("VMLAUNCH/VMRESUME-Launch/Resume Virtual Machine"):
    VMfail, a VM-entry failure, or the guest runs (True)."""
    r, cpu = s.result, s.cpu
    try:
        cpu.vmlaunch()
    except VmxFail as e:
        r.launch_error = e.error
        r.launch = "VMfailInvalid" if e.error is None else f"VMfailValid({e.error})"
        r.outcome = "vmfail"
        r.detail = _violations_line(r.check) or r.launch
        return False
    except VmxFault as e:
        r.launch, r.outcome, r.detail = f"exception {e}", "error", f"VMLAUNCH raised {e}"
        return False
    except MachineNotImplemented as e:
        r.launch, r.outcome, r.detail = "not simulated", "error", str(e)
        return False
    if cpu.exit is not None and cpu.exit.entry_failure:
        r.launch = f"VM-entry failure, exit reason {cpu.exit.basic} ({cpu.exit.name})"
        r.outcome = "entry failure"
        r.detail = _violations_line(r.check) or r.launch
        return False
    r.launch = "VM entry succeeded"
    return True


def _violations_line(result) -> str:
    if result is None or result.ok:
        return ""
    return f"{result.headline()}: " + "; ".join(f"{v.id} ({v.field})" for v in result.violations)


def _classify_sim(s: Session, stop) -> None:
    r, h = s.result, s.handler
    if h.exhausted:
        r.outcome, r.detail = "budget exhausted", f"more than {s.recorder.max_exits} VM exits (--max-exits)"
    elif stop.reason == StopReason.BUDGET:
        r.outcome, r.detail = "budget exhausted", f"{r.timeout:g} s of run time used up (--timeout)"
    elif h.halted:
        r.outcome, r.detail = "halted", f"HLT exit at guest RIP {s.cpu.exit.guest_rip:#x}"
    elif h.report is not None:
        last = r.exits[-1] if r.exits else None
        if last is not None and last["reason"] == X.TRIPLE_FAULT and not last["entry_failure"]:
            r.outcome, r.detail = "shutdown", f"TRIPLE_FAULT exit at guest RIP {last['guest_rip']:#x}"
        else:
            r.outcome, r.detail = "stopped", h.report
    elif stop.reason == StopReason.HALTED:
        r.outcome = "devirtualized" if h.devirtualized else "halted"
        r.detail = f"{stop.detail or 'HLT with nothing that can wake the processor'}; RIP {stop.rip:#x}"
    elif stop.reason == StopReason.SHUTDOWN:
        r.outcome, r.detail = "shutdown", vmx_abort(s) or f"triple fault at {stop.rip:#x}"
    else:
        r.outcome, r.detail = "error", str(stop)


def vmx_abort(s: Session) -> str:
    """A VMX abort ("VMX Aborts": a VM exit that could not complete writes its
    indicator at byte 4 of the VMCS region, then shutdown), described; or ""."""
    vmx = s.cpu.vmx
    pointer = vmx.current if vmx.in_vmx else None
    if pointer is None or not s.m.mem.contains(pointer + 4, 4):
        return ""
    indicator = s.m.mem.read32(pointer + 4)
    if not indicator:
        return ""
    what = X.VMX_ABORT_INDICATORS.get(indicator, "an indicator the SDM does not define")
    e = s.cpu.exit
    during = f" (in the VM exit for {e.name} at guest RIP {e.guest_rip:#x})" if e is not None else ""
    return f"VMX abort, indicator {indicator}: {what}{during}"


def crash_vector(read_phys) -> int | None:
    """The first fatal vector the kernel counted (kernel.asm vector_counts), if any."""
    from ..guests.kernel import image as kernel_image
    counts = struct.unpack("<32Q", read_phys(kernel_image().labels["vector_counts"], 32 * 8))
    return next((v for v in _FATAL_VECTORS if counts[v]), None)


def finish(s: Session, read_phys) -> None:
    """Console, a crash seen by the kernel, final guest registers (from the VMCS when
    the last exit left the guest's state there, else the live processor)."""
    r, cpu = s.result, s.cpu
    r.console = s.m.uart.text()
    if r.outcome in ("halted", "devirtualized") and read_phys is not None:
        v = crash_vector(read_phys)
        if v is not None:
            r.outcome = "crashed"
            r.detail = f"the guest took {exception_name(v)} (vector {v}); the kernel's handler printed it and halted"
    if not r.registers:
        if cpu.vmx.in_vmx and not cpu.vmx.non_root and cpu.vmx.current_vmcs is not None:
            state = cpu.guest_snapshot()
        else:
            state = s.m.get_state()
        r.registers = registers_of(state)


def registers_of(state: dict) -> dict[str, int]:
    """REGISTERS from a machine/state.py snapshot."""
    return {name: state[_STATE_KEY.get(name, name)] for name in REGISTERS}
