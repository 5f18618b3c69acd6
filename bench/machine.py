"""Benchmarks of the simulated processor (`python -m bench.machine`).

Each figure is measured in this run; ratios compare with raw unicorn on the same
bytes in the same process.

1. throughput: a memory-bound loop (8 instructions per iteration, a load and a
   store through 4-level paging) on the vmxlab machine (UC_TLB_VIRTUAL, page
   walks in Python, intercept hooks installed) versus raw unicorn running the
   same memory image without hooks in two configurations: UC_TLB_VIRTUAL with
   an identity fill (same engine configuration, the overhead of the machine's
   fills, hooks and Python) and unicorn's default UC_TLB_CPU with its own page
   walker (measured 5x slower here on stores: it maps data pages executable,
   and stores to executable pages take a slow path); for a 64 KiB working set (16 pages: both stay within unicorn's TLB; the
   steady-state overhead) and a 2 MiB one (512 pages: raw unicorn refills its
   256-entry TLB all the time; the machine grows it, see runloop.py);
2. one exception (#DE) delivered through the IDT (handler: skip the DIV, IRETQ),
   net of the loop around it;
3. one RDMSR emulated from the MSR file, net of the loop;
4. one CPUID handed to a client that answers DONE (sets EAX..EDX, advances RIP);
5. get_state() and set_state() of a full snapshot.
"""
from __future__ import annotations

import statistics
import sys
import time

from vmxlab.arch import segments as S
from vmxlab.guests.asm import asm
from vmxlab.machine import Action, Kind, Machine, StopReason
from vmxlab.machine import context_blob as CB
from vmxlab.machine import registers as REG
from vmxlab.machine import unicorn_ffi as ffi

GDT, IDT, TSS, PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x10000, 0x11000, 0x12000, 0x13000
CODE, HANDLERS, STACK = 0x40000, 0x50000, 0x80000
MEM = 16 << 20


def q(x: int) -> bytes:
    return x.to_bytes(8, "little")


def image() -> dict[int, bytes]:
    """Flat 64-bit environment: GDT, TSS, page tables identity-mapping 16 MiB."""
    gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]
    tss = S.encode_descriptor(TSS, 0x67, 0x89)
    return {
        GDT: b"".join(q(d) for d in gdt) + tss,
        TSS + 4: q(STACK),
        PML4: q(PDPT | 7), PDPT: q(PD | 7),
        PD: q(PT | 7) + b"".join(q((i << 21) | 0x87) for i in range(1, 8)),
        PT: b"".join(q((i << 12) | 7) for i in range(512)),
    }


def gate(vector: int, target: int) -> tuple[int, bytes]:
    lo = (target & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((target >> 16) & 0xFFFF) << 48)
    return IDT + 16 * vector, q(lo) + q(target >> 32)


def machine(code: bytes, extra: dict[int, bytes] | None = None) -> Machine:
    m = Machine(None, MEM)
    for addr, data in {**image(), **(extra or {})}.items():
        m.load(addr, data)
    m.load(CODE, code)
    s = m.get_state()
    s.update({"GUEST_CR0": 0x80050033, "GUEST_CR3": PML4, "GUEST_CR4": 0x620, "GUEST_IA32_EFER": 0xD01,
              "GUEST_RIP": CODE, "GUEST_RSP": STACK, "GUEST_RFLAGS": 2,
              "GUEST_GDTR_BASE": GDT, "GUEST_GDTR_LIMIT": 39, "GUEST_IDTR_BASE": IDT,
              "GUEST_IDTR_LIMIT": 4095, "GUEST_TR_SELECTOR": 0x18, "GUEST_TR_BASE": TSS,
              "GUEST_TR_LIMIT": 0x67, "GUEST_TR_AR_BYTES": 0x8B})
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
        code_seg = seg == "CS"
        s.update({f"GUEST_{seg}_SELECTOR": 0x08 if code_seg else 0x10, f"GUEST_{seg}_BASE": 0,
                  f"GUEST_{seg}_LIMIT": 0xFFFFFFFF, f"GUEST_{seg}_AR_BYTES": 0xA09B if code_seg else 0xC093})
    m.set_state(s)
    return m


def raw_unicorn(code: bytes, virtual: bool = False):
    """The same bytes on a plain engine, no hooks: unicorn's own paging (UC_TLB_CPU),
    or (`virtual`) UC_TLB_VIRTUAL with an identity fill (the guest's tables map
    identity too) granting read/write on data fills and execute on fetch fills."""
    eng = ffi.Engine(ffi.X.UC_CPU_X86_SKYLAKE_SERVER, tlb_virtual=virtual)
    if virtual:
        def fill(uc, vaddr, access, entry, ud):
            e = entry[0]
            e.paddr = vaddr
            e.perms = ffi.PROT_EXEC | ffi.PROT_READ if access == ffi.ACCESS_FETCH else ffi.PROT_READ | ffi.PROT_WRITE
            return True
        eng._bench_fill = ffi.TLB_FILL_CB(fill)
        eng.add_hook(ffi.UC.UC_HOOK_TLB_FILL, eng._bench_fill)
    eng.uc.mem_map(0, MEM)
    for addr, data in image().items():
        eng.uc.mem_write(addr, data)
    eng.uc.mem_write(CODE, code)
    eng.reg_write(ffi.X.UC_X86_REG_GDTR, (0, GDT, 39, 0))
    eng.msr_write(0xC0000080, 0xD01)
    eng.reg_write(ffi.X.UC_X86_REG_CR3, PML4)
    eng.reg_write(ffi.X.UC_X86_REG_CR4, 0x620)
    eng.reg_write(ffi.X.UC_X86_REG_CR0, 0x80050033)
    eng.reg_write(ffi.X.UC_X86_REG_RSP, STACK)
    blob = CB.ContextBlob(eng, CB.layout(ffi.X.UC_CPU_X86_SKYLAKE_SERVER)).load()
    blob.set_cache(CB.CS, 0x08, 0, 0xFFFFFFFF, CB.ar_to_flags(0xA09B))
    for slot in (CB.SS, CB.DS, CB.ES):
        blob.set_cache(slot, 0x10, 0, 0xFFFFFFFF, CB.ar_to_flags(0xC093))
    blob.recompute_segment_hflags(0x80050033, 2)
    blob.store()
    return eng


def median_time(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


# ---- 1. throughput --------------------------------------------------------------------------
LOOP_ITERS = 4_000_000


def memloop(region: int) -> bytes:
    """8 instructions per iteration: a load and a store walking `region` bytes at 0x200000."""
    return asm(f"""
    mov rcx, {LOOP_ITERS}
    mov rsi, 0x200000
L:  mov rax, [rsi]
    add rax, rcx
    mov [rsi + 8], rax
    add rsi, 16
    and rsi, {region - 1}
    or rsi, 0x200000
    dec rcx
    jnz L
    hlt""", CODE).code


INSNS = 2 + 8 * LOOP_ITERS


def throughput(region: int, runs: int = 5) -> tuple[float, float, float, float, float]:
    """Rates (insn/s) of the machine, raw UC_TLB_CPU and raw UC_TLB_VIRTUAL, each the
    best of `runs` rounds, and the median of the per-round ratios machine / raw
    (the three are measured back to back in a round, so that the host's speed
    drifting between rounds does not bias the ratios)."""
    code = memloop(region)

    def on_machine():
        m = machine(code)
        t = time.perf_counter()
        st = m.run()
        dt = time.perf_counter() - t
        assert st.reason == StopReason.HALTED, st
        return dt

    def on_unicorn(virtual):
        eng = raw_unicorn(code, virtual)
        t = time.perf_counter()
        eng.start(CODE)
        return time.perf_counter() - t
    rounds = [(on_machine(), on_unicorn(False), on_unicorn(True)) for _ in range(runs)]
    a = min(r[0] for r in rounds)
    b = min(r[1] for r in rounds)
    c = min(r[2] for r in rounds)
    ratio_cpu = statistics.median(r[1] / r[0] for r in rounds)
    ratio_virtual = statistics.median(r[2] / r[0] for r in rounds)
    return INSNS / a, INSNS / b, INSNS / c, ratio_cpu, ratio_virtual


# ---- 2-4. per-event costs ---------------------------------------------------------------------
def per_event(body: str, n: int, setup=None, extra=None) -> float:
    """Seconds per iteration of `body` in a counted loop, minus the empty loop."""
    def run(src: str) -> float:
        code = asm(f"mov r12, {n}\nL: {src}\ndec r12\njnz L\nhlt", CODE).code
        m = machine(code, extra)
        if setup:
            setup(m)
        t = time.perf_counter()
        st = m.run()
        dt = time.perf_counter() - t
        assert st.reason == StopReason.HALTED, st
        return dt
    full = statistics.median(run(body) for _ in range(3))
    empty = statistics.median(run("nop") for _ in range(3))
    return (full - empty) / n


def exception_cost(n: int = 20000) -> float:
    handler = asm("add qword ptr [rsp], 2; iretq", HANDLERS).code        # skip the 2-byte DIV
    extra = {HANDLERS: handler, gate(0, HANDLERS)[0]: gate(0, HANDLERS)[1]}
    return per_event("xor ecx, ecx; mov eax, 1; div ecx", n, extra=extra)


def rdmsr_cost(n: int = 50000) -> float:
    return per_event("mov ecx, 0x277; rdmsr", n)


def cpuid_done_cost(n: int = 50000) -> float:
    def setup(m):
        g = m.gprs.values

        def client(machine, event):
            machine.gprs.read()
            g[REG.RAX], g[REG.RBX], g[REG.RCX], g[REG.RDX] = 1, 2, 3, 4
            g[REG.RIP] = event.rip + event.length
            machine.gprs.write()
            return Action.DONE
        m.client = client
        m.intercept(Kind.CPUID)
    return per_event("mov eax, 0; cpuid", n, setup=setup)


def state_costs(n: int = 2000) -> tuple[float, float]:
    m = machine(b"\xf4")
    s = m.get_state()
    t = time.perf_counter()
    for _ in range(n):
        m.get_state()
    get = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        m.set_state(s)
    put = (time.perf_counter() - t) / n
    return get, put


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    runs = 3 if quick else 7
    for region, what in ((64 << 10, "64 KiB working set (fits unicorn's TLB)"),
                         (2 << 20, "2 MiB working set (more pages than unicorn's initial TLB)")):
        ours, raw, raw_v, ratio, ratio_v = throughput(region, runs)
        print(f"memory-bound loop, {what}:\n"
              f"    vmxlab {ours / 1e6:6.1f} M insn/s; raw unicorn UC_TLB_VIRTUAL + identity fill "
              f"{raw_v / 1e6:6.1f} M insn/s (ratio {ratio_v:.2f}); raw unicorn default UC_TLB_CPU "
              f"{raw / 1e6:6.1f} M insn/s (ratio {ratio:.2f})")
    print(f"exception (#DE) delivered through the IDT and IRETQ: {exception_cost() * 1e6:7.2f} us")
    print(f"RDMSR emulated from the MSR file:                   {rdmsr_cost() * 1e6:7.2f} us")
    print(f"CPUID handed to a client answering DONE:            {cpuid_done_cost() * 1e6:7.2f} us")
    get, put = state_costs()
    print(f"get_state() / set_state() of a full snapshot:       {get * 1e6:7.2f} / {put * 1e6:.2f} us")


if __name__ == "__main__":
    main()
