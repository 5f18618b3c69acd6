"""The VM-exit round trip of the simulated VMX processor, beside the /dev/kvm reference.

    python -m bench.vmx [--exits N]

Three round trips, measured in the same run:
1. Python handler: a guest looping on CPUID; each CPUID exits to a Python host
   handler (HOST_RIP registered with VmxCpu.register_host) that reads GUEST_RIP and
   the instruction length, writes GUEST_RIP and VMRESUMEs.  Per exit: the time
   between consecutive handler calls (guest loop included), median over N exits.
2. Machine-code hypervisor: guests/vmx_hypervisor.asm (host code in the simulator:
   VMREAD, CPUID for the guest, VMWRITE, VMRESUME) with its guest running CPUID N/10
   times; total time / exits.
3. /dev/kvm reference (as bench.kvm): KvmMachine.run() of a CPL0 `out` exit, median,
   where /dev/kvm exists.  1 and 3 run in interleaved batches of 2000 exits (the
   host's speed drifts); the ratio is the median of the per-batch ratios.
4. The floor: the same loop on the bare machine, its client advancing RIP inside the
   code hook (no VMX): what the Python handler's round trip costs before VMX.
5. The engine's floor: raw unicorn, a ctypes code hook on the CPUID that writes RIP
   past it (no machine at all): what any trap into Python costs on this host.  The
   machine-code hypervisor takes seven per exit (the guest's CPUID, four VMREAD/
   VMWRITE, its own CPUID, VMRESUME).
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time

from vmxlab.arch import controls as C
from vmxlab.arch import fields as F
from vmxlab.guests.asm import asm
from vmxlab.guests.hypervisor import install
from vmxlab.machine import Machine
from vmxlab.vmx.cpu import VmxCpu
from vmxlab.vmx.setup import fields_from_state

GUEST, HOST, VMXON, VMCS = 0x70000, 0x48000, 0x100000, 0x101000
CPUID_LOOP = "top: push rcx\nxor eax, eax\ncpuid\npop rcx\njmp top"     # the guest of 1 and 4


def _flat_machine() -> Machine:
    """A flat 64-bit machine (identity paging) for the Python-handler benchmark."""
    from vmxlab.arch import segments as S
    m = Machine("skylake-client", 16 << 20)
    q = lambda x: struct.pack("<Q", x)
    gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]
    m.load(0x1000, b"".join(q(d) for d in gdt) + S.encode_descriptor(0x3000, 0x67, 0x89))
    m.load(0x10000, q(0x11000 | 3))
    m.load(0x11000, q(0x12000 | 3))
    m.load(0x12000, b"".join(q((i << 21) | 0x83) for i in range(512)))
    s = m.get_state()
    s.update({"GUEST_CR0": 0x80050033, "GUEST_CR3": 0x10000, "GUEST_CR4": 0x2620, "GUEST_IA32_EFER": 0xD01,
              "GUEST_RSP": 0x80000, "GUEST_RFLAGS": 2, "GUEST_GDTR_BASE": 0x1000, "GUEST_GDTR_LIMIT": 39,
              "GUEST_TR_SELECTOR": 0x18, "GUEST_TR_BASE": 0x3000, "GUEST_TR_LIMIT": 0x67, "GUEST_TR_AR_BYTES": 0x8B,
              "GUEST_LDTR_AR_BYTES": 0x10000})
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
        code = seg == "CS"
        s.update({f"GUEST_{seg}_SELECTOR": 8 if code else 0x10, f"GUEST_{seg}_BASE": 0,
                  f"GUEST_{seg}_LIMIT": 0xFFFFFFFF, f"GUEST_{seg}_AR_BYTES": 0xA09B if code else 0xC093})
    m.set_state(s)
    m.msrs.poke(0x3A, 5)
    return m


class CpuidLoop:
    """A guest looping on CPUID for ever, each CPUID exiting to a Python host
    handler that advances GUEST_RIP and VMRESUMEs; batch(k) runs k + 1 exits and
    returns the k times between consecutive handler calls (ns)."""

    def __init__(self):
        m = _flat_machine()
        self.cpu = cpu = VmxCpu(m)
        for page in (VMXON, VMCS):
            m.load(page, struct.pack("<I", m.profile.revision_id))
        m.load(GUEST, asm(CPUID_LOOP, GUEST).code)
        self.stamps: list[int] = []
        self.left = 0
        clock = time.perf_counter_ns

        def handler(c):
            self.stamps.append(clock())
            c.vmwrite(F.GUEST_RIP, c.vmread(F.GUEST_RIP) + c.vmread(F.VM_EXIT_INSTRUCTION_LEN))
            c.vmresume()
            self.left -= 1
            if not self.left:
                c.stop("batch done")

        cpu.vmxon(VMXON)
        cpu.vmclear(VMCS)
        cpu.vmptrld(VMCS)
        values = fields_from_state(m.get_state(), m.profile, host_rip=HOST, host_rsp=0x90000,
                                   controls={"SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENABLE_VPID})
        values[F.VM_EXIT_CONTROLS] |= C.VM_EXIT_SAVE_DEBUG_CONTROLS        # as KVM sets them
        values[F.VM_ENTRY_CONTROLS] |= C.VM_ENTRY_LOAD_DEBUG_CONTROLS
        values.update({F.GUEST_RIP: GUEST, F.GUEST_RSP: 0x7F000, F.VIRTUAL_PROCESSOR_ID: 1})
        for enc, value in values.items():
            cpu.vmwrite(enc, value)
        cpu.register_host(HOST, handler)
        cpu.vmlaunch()

    def batch(self, k: int) -> list[int]:
        self.stamps, self.left = [], k + 1
        stop = self.cpu.run(time_budget=600)
        if len(self.stamps) != k + 1:
            raise RuntimeError(f"the CPUID loop ended with {stop} after {len(self.stamps)} exits")
        st = self.stamps
        return [b - a for a, b in zip(st, st[1:])]


class KvmOutLoop:
    """The /dev/kvm reference of bench.kvm: KvmMachine.run() of a CPL0 guest looping
    on `out 0x10, eax`, from entering run() to having port and data (ns)."""

    def __init__(self):
        from bench.kvm import OUT_LOOP
        from vmxlab.kvm import flat
        self.m = flat.machine(OUT_LOOP)
        for _ in range(1000):
            self.m.run()

    def batch(self, k: int) -> list[int]:
        run, clock, out = self.m.run, time.perf_counter_ns, []
        for _ in range(k):
            t0 = clock()
            e = run()
            _port, _value = e.port, e.value
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        self.m.close()


class MachineFloor:
    """The same CPUID loop on the bare machine (no VMX): a client called inside the
    code hook advances RIP -- what handing an instruction to Python and back costs
    before any VMX work; batch(k) as CpuidLoop.batch."""

    def __init__(self):
        from vmxlab.machine import Action, Kind
        from vmxlab.machine import registers as REG
        m = self.m = _flat_machine()
        m.load(GUEST, asm(CPUID_LOOP, GUEST).code)
        s = m.get_state()
        s["GUEST_RIP"], s["GUEST_RSP"] = GUEST, 0x7F000
        m.set_state(s)
        self.stamps: list[int] = []
        self.left = 0
        clock, rip, done, stop = time.perf_counter_ns, REG.RIP, Action.DONE, Action.STOP

        def client(mm, ev):
            self.stamps.append(clock())
            self.left -= 1
            if self.left < 0:
                return stop
            mm.gprs.values[rip] = ev.rip + ev.length
            mm.gprs.write_pc()
            return done
        m.client = client
        m.intercept(Kind.CPUID)

    def batch(self, k: int) -> list[int]:
        self.stamps, self.left = [], k
        self.m.run(time_budget=600)
        st = self.stamps
        return [b - a for a, b in zip(st, st[1:])]


class RawHookFloor:
    """CPUID_LOOP on a bare unicorn engine (identity-mapped flat memory, no paging
    hooks): a code hook on the CPUID writes RIP past it; batch(k) as CpuidLoop.batch."""

    def __init__(self):
        import ctypes
        import mmap
        from unicorn import x86_const as X
        from vmxlab.machine import unicorn_ffi as ffi
        self._buf = mmap.mmap(-1, 1 << 20)
        self.engine = e = ffi.Engine(X.UC_CPU_X86_SKYLAKE_CLIENT if hasattr(X, "UC_CPU_X86_SKYLAKE_CLIENT") else 0)
        e.map_host(0, 1 << 20, ctypes.addressof(ctypes.c_char.from_buffer(self._buf)))
        code = asm(CPUID_LOOP, 0x1000).code
        self._buf[0x1000:0x1000 + len(code)] = code
        site = 0x1000 + code.index(b"\x0f\xa2")
        rip = ffi.RegBatch(e.handle, [ffi.X.UC_X86_REG_RIP])
        e.reg_write(ffi.X.UC_X86_REG_RSP, 0x8000)
        self.stamps: list[int] = []
        self.left = 0
        clock = time.perf_counter_ns

        def hook(uc, address, size, ud):
            self.stamps.append(clock())
            rip.values[0] = address + 2
            rip.write_pc()
            self.left -= 1
            if self.left < 0:
                e.stop()
        self._cb = ffi.CODE_CB(hook)
        e.add_hook(ffi.UC.UC_HOOK_CODE, self._cb, site, site)

    def batch(self, k: int) -> list[int]:
        self.stamps, self.left = [], k
        self.engine.start(0x1000)
        st = self.stamps
        return [b - a for a, b in zip(st, st[1:])]


def python_handler_beside_kvm(n: int, batch: int = 2000):
    """Both round trips in interleaved batches (the host's speed drifts): per-exit
    samples of each, and the per-batch ratios of the medians."""
    sim = CpuidLoop()
    try:
        kvm: KvmOutLoop | str = KvmOutLoop()
    except Exception as e:           # /dev/kvm missing or refusing: say so, keep the other figures
        kvm = f"not measured ({str(e).splitlines()[0]})"
    sim_ns: list[int] = []
    kvm_ns: list[int] = []
    ratios: list[float] = []
    try:
        for done in range(0, n, batch):
            k = min(batch, n - done)
            s = sim.batch(k)
            sim_ns += s
            if not isinstance(kvm, str):
                r = kvm.batch(k)
                kvm_ns += r
                ratios.append(statistics.median(s) / statistics.median(r))
    finally:
        if not isinstance(kvm, str):
            kvm.close()
    return sim_ns, (kvm if isinstance(kvm, str) else kvm_ns), ratios, sim.cpu.quick_checks


def _median_p90(ns: list[int]) -> tuple[float, float]:
    ns = sorted(ns)
    return statistics.median(ns) / 1000, ns[len(ns) * 9 // 10] / 1000


def machine_code_round_trip(n: int) -> tuple[float, int]:
    m = Machine("skylake-client")
    cpu = VmxCpu(m)
    drv = install(m)
    m.mem.write64(drv.labels["hv_iterations"], n)
    t0 = time.perf_counter()
    stop = cpu.run(time_budget=600)
    seconds = time.perf_counter() - t0
    status = m.mem.read64(drv.labels["hv_status"])
    if status != 0 or stop.reason.value != "halted":
        raise RuntimeError(f"the machine-code hypervisor ended with status {status}, {stop}")
    return seconds / cpu.exit_count * 1e6, cpu.exit_count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.vmx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=int, default=100_000, help="exits to time (default 100000)")
    args = ap.parse_args(argv)
    if not 100 <= args.exits < 2 ** 31:
        print("python -m bench.vmx: --exits must be at least 100", file=sys.stderr)
        return 2
    sim_ns, kvm, ratios, _quick = python_handler_beside_kvm(args.exits)
    mc, mc_exits = machine_code_round_trip(max(args.exits // 10, 10))
    floor_med, floor_p90 = _median_p90(MachineFloor().batch(max(args.exits // 5, 100)))
    raw_med, raw_p90 = _median_p90(RawHookFloor().batch(max(args.exits // 5, 100)))
    py_med, py_p90 = _median_p90(sim_ns)
    print(f"VM-exit round trip, {args.exits:,} exits (guest CPUID -> host -> VMRESUME)")
    print(f"  Python handler (simulator)        median {py_med:6.1f} us   p90 {py_p90:6.1f} us")
    print(f"  machine-code hypervisor           mean   {mc:6.1f} us   ({mc_exits:,} exits)")
    print(f"  bare machine, no VMX (the floor)  median {floor_med:6.1f} us   p90 {floor_p90:6.1f} us")
    print(f"  raw unicorn hook into Python      median {raw_med:6.1f} us   p90 {raw_p90:6.1f} us   "
          "(any trap; machine code takes 7 per exit)")
    if isinstance(kvm, str):
        print(f"  /dev/kvm reference (CPL0 OUT)     {kvm}")
    else:
        k_med, k_p90 = _median_p90(kvm)
        print(f"  /dev/kvm reference (CPL0 OUT)     median {k_med:6.1f} us   p90 {k_p90:6.1f} us")
        print(f"  Python handler / KVM reference    {statistics.median(ratios):.2f} "
              f"(median of {len(ratios)} interleaved batches; range {min(ratios):.2f} - {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
