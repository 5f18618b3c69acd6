"""The main job: the seed's hypervisor blue-pills the built-in kernel.

1. The kernel boots on the simulated processor and reaches its "load driver"
   point (guests/bluepill.asm: bp_load_driver).
2. The hypervisor, written in Python against vmx/, takes over there as the
   seed's driver does: enables VMX, VMXON, VMCLEAR, VMPTRLD, fills the VMCS step by
   step (hypervisor.seed_setup, reading the live state through the processor),
   builds an identity EPT, checks the VMCS (checks/), VMLAUNCHes with GUEST_RIP =
   the instruction after the load point.
3. The kernel runs on, virtualized: its workload sees the hypervisor (CPUID),
   exercises the exit handlers (hypervisor.handlers) and asks the hypervisor to
   unload; the hypervisor VMXOFFs and hands the processor back.
4. The kernel finishes natively.

`--seed-literal` replays the seed as written: VMLAUNCH fails with the VMfailValid
number the hardware would give, and the checker names every violation with the
seed line responsible.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ..arch import fields as F
from ..caps import adjust, load as load_profile
from ..checks import check
from ..guests.asm import Assembly, asm
from ..guests.kernel import boot
from ..machine import Machine
from ..machine.runloop import StopReason
from ..vmx import ept as EPT
from ..vmx.cpu import VmxCpu, VmxFail, VmxFault
from .handlers import ExitHandler, Statistics, Tracer
from .processor import ProbeFault, Processor
from .seed import SEED_CONTROLS
from .seed_setup import DEVIATIONS, STEPS, Environment, SeedSetup, Write

SCENE = 0x300000             # guests/bluepill.asm
HV_MEMORY = 0x400000         # the hypervisor's own memory (identity-mapped by the kernel)
HV_STACK_PAGES = 4
HOST_HANDLER = 0xFFFF_8000_DEAD_0000   # HOST_RIP: registered as the Python exit handler
MEMORY_SIZE = 64 << 20


@lru_cache(maxsize=1)
def scene() -> Assembly:
    return asm(resources.files("vmxlab.guests").joinpath("bluepill.asm").read_text(), SCENE)


class _Allocator:
    def __init__(self, machine, base: int):
        self.m, self.next = machine, base

    def page(self) -> int:
        address = self.next
        self.next += 0x1000
        self.m.write_host(address, bytes(4096))
        return address


@dataclass
class DemoResult:
    profile: str
    literal: bool
    writes: list[Write] = field(default_factory=list)
    adjustments: list = field(default_factory=list)      # caps.adjust Adjustment per seed control
    check: object = None                                  # checks.Result (all violations)
    launch: str = ""                                      # what VMLAUNCH did
    launch_error: int | None = None
    console: str = ""
    exits: dict = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    outcome: str = ""
    report: str = ""
    seconds: float = 0.0
    results: dict = field(default_factory=dict)
    seed_lines: dict = field(default_factory=dict)         # rule id -> seed line (literal mode)

    @property
    def exits_per_second(self) -> float:
        n = sum(self.exits.values())
        return n / self.seconds if self.seconds else 0.0


def boot_to_load_point(profile, memory_size: int = MEMORY_SIZE, time_budget: float = 30.0,
                       workload: int | None = None):
    """The kernel booted up to its "load driver" point: (machine, cpu, scene, stop)."""
    m = Machine(profile, memory_size)
    cpu = VmxCpu(m)
    kernel = boot(m)
    m.msrs.poke(0x3A, 0x5)      # the firmware locks IA32_FEATURE_CONTROL with VMX enabled, as BIOSes do
    sc = scene()
    m.load(SCENE, sc.code)
    m.mem.write64(kernel.labels["driver_ptr"], sc.labels["bp_driver"])
    m.mem.write64(kernel.labels["workload_ptr"], workload if workload is not None else sc.labels["bp_workload"])
    m.add_breakpoint(sc.labels["bp_load_driver"])
    stop = m.run(time_budget=time_budget)
    m.remove_breakpoint(sc.labels["bp_load_driver"])
    return m, cpu, sc, stop


def load_hypervisor(m, cpu, sc, literal: bool = False, handler: ExitHandler | None = None,
                    edits=()) -> tuple[SeedSetup, Processor]:
    """The driver: enable VMX, VMXON, VMCLEAR, VMPTRLD and the seed's setup steps.
    `edits`: (field, operation, value) applied after the setup (run --set/--or/--andnot).
    Raises ProbeFault when an instruction of the driver faults."""
    proc = Processor(m)
    mem = _Allocator(m, HV_MEMORY)
    vmxon_region, vmcs_region, msr_bitmap = mem.page(), mem.page(), mem.page()
    for _ in range(HV_STACK_PAGES):
        mem.page()
    host_stack_top = mem.next
    eptp = EPT.identity_map(mem.page, m.mem.write64, m.mem.size)
    cpu.register_host(HOST_HANDLER, (handler or ExitHandler()).handle)
    env = Environment(msr_bitmap=msr_bitmap, host_stack_top=host_stack_top, host_rip=HOST_HANDLER,
                      guest_rip=sc.labels["bp_resume"], guest_rsp=proc.execute("mov rax, rsp", out=("RAX",))["RAX"],
                      eptp=eptp, vpid=1)
    setup = SeedSetup(cpu, proc, env, literal=literal)
    revision = proc.rdmsr(0x480) & 0x7FFFFFFF
    m.write_host(vmxon_region, struct.pack("<I", revision))
    m.write_host(vmcs_region, struct.pack("<I", revision))
    # what the seed's earlier chapters do before VMXON: CR0/CR4 through the fixed MSRs
    # (this sets CR0.NE and CR4.VMXE)
    for cr, fixed0 in ((0, 0x486), (4, 0x488)):
        value = (proc.read_cr(cr) | proc.rdmsr(fixed0)) & proc.rdmsr(fixed0 + 1)
        proc.execute(f"mov cr{cr}, rax", regs={"RAX": value})
    cpu.vmxon(vmxon_region)
    cpu.vmclear(vmcs_region)
    cpu.vmptrld(vmcs_region)
    try:
        setup.run()
    except ProbeFault as e:
        e.setup = setup                 # the writes made before the driver crashed
        raise
    for name, op, value in edits:
        old = cpu.vmread(name)
        new = value if op == "set" else (old | value if op == "or" else old & ~value)
        setup.write(17, name, new, f"--{op} {value:#x} (command line)", "(not in the seed)")
    return setup, proc


def run_demo(cpu_profile: str | None = None, literal: bool = False, trace: bool = False,
             time_budget: float = 30.0) -> DemoResult:
    profile = load_profile(cpu_profile)
    result = DemoResult(profile.name, literal)
    m, cpu, sc, stop = boot_to_load_point(profile, time_budget=time_budget)
    if stop.reason != StopReason.BREAKPOINT:
        result.outcome, result.report = "boot failed", str(stop)
        result.console = m.uart.text()
        return result
    handler = ExitHandler()
    stats, tracer = Statistics(), Tracer()
    cpu.observers.append(stats)
    if trace:
        cpu.observers.append(tracer)
    result.adjustments = [adjust(profile, f, w) for f, w in SEED_CONTROLS.items()]
    try:
        setup, _proc = load_hypervisor(m, cpu, sc, literal, handler)
    except ProbeFault as e:
        result.outcome = "driver crashed"
        if getattr(e, "setup", None) is not None:
            result.writes = e.setup.writes
        result.report = (f"{e.what} raised #{'GP' if e.vector == 13 else e.vector} at CPL 0 in the driver "
                         + ("(the seed reads the TRUE capability MSRs without checking IA32_VMX_BASIC bit 55)"
                            if "rdmsr" in e.what.lower() and "TRUE" in e.what else ""))
        result.console = m.uart.text()
        return result
    result.writes = setup.writes
    vmcs = cpu.vmx.current_vmcs
    result.check = check(vmcs, profile, memory=lambda a, n: m.mem.read(a, n) if m.mem.contains(a, n) else None,
                         all=True, vmcs_pointer=cpu.vmx.current)
    if literal:
        result.seed_lines = {v.id: setup.seed_line_for(v.field) for v in result.check.violations}
    # ---- VMLAUNCH -----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        cpu.vmlaunch()
    except VmxFail as e:
        result.launch = "VMfailInvalid" if e.error is None else f"VMfailValid({e.error})"
        result.launch_error = e.error
        result.outcome = "VMLAUNCH failed"
        result.console = m.uart.text()
        return result
    except VmxFault as e:
        result.launch, result.outcome = f"exception {e}", "VMLAUNCH faulted"
        result.console = m.uart.text()
        return result
    if cpu.exit is not None and cpu.exit.entry_failure:
        result.launch = f"VM-entry failure, exit reason {cpu.exit.basic} ({cpu.exit.name})"
    else:
        result.launch = "VM entry succeeded: the kernel runs as a guest"
    stop = cpu.run(time_budget=time_budget)
    result.seconds = time.perf_counter() - t0
    result.exits = dict(stats.counts)
    result.trace = tracer.lines
    result.console = m.uart.text()
    lab = sc.labels
    r = m.mem.read(lab["bp_results"], 80)
    q = [struct.unpack_from("<Q", r, i)[0] for i in range(0, 80, 8)]
    result.results = {"hypervisor_before": q[0], "signature": r[8:20].rstrip(b"\0").decode(errors="replace"),
                      "tsc_aux": q[3], "sysenter_cs": q[4], "gp_count": q[5], "ping": q[6], "unload": q[7],
                      "hypervisor_after": q[8], "xcr0": q[9]}
    if handler.report:
        result.outcome, result.report = "stopped", handler.report
    elif stop.reason == StopReason.HALTED and handler.devirtualized:
        result.outcome = "devirtualized; the kernel finished natively"
    else:
        result.outcome, result.report = stop.reason.value, str(stop)
    return result
