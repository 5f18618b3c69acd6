"""Intercept sites stay single when a code page is rewritten between runs.

Adding a site's code hook can make unicorn look the code page up again, which
re-enters the TLB fill hook and the page scan (sites.py).  A page scanned twice
that way hooked each site twice, and an instruction the machine emulates inside
the hook then ran twice.  Architectural expectation: CPUID leaf 0 returns the
maximum basic leaf in EAX and the vendor string in EBX, EDX, ECX (SDM Vol. 2
"CPUID"), on every run.  Found by the differential runner (docs/differential.md)."""
from mhelpers import CODE, USTACK, Env
from vmxlab.machine import StopReason


def test_cpuid_runs_once_after_the_code_page_is_rewritten():
    e = Env()
    e.handler(13, "hlt")                       # the HLT at CPL3 raises #GP(0)
    first = None
    for _ in range(3):
        e.code("cpuid\nhlt")                   # a host write to the code page: its sites are dropped
        s = e.m.get_state()
        e.set_segments(s, ring=3)
        s.update({"GUEST_RIP": CODE, "GUEST_RSP": USTACK, "RAX": 0, "RCX": 0, "GUEST_ACTIVITY_STATE": 0})
        e.m.set_state(s)
        e.m.flush_tlb()
        assert e.m.run(time_budget=2).reason == StopReason.HALTED
        regs = (e.reg("RAX"), e.reg("RBX"), e.reg("RCX"), e.reg("RDX"))
        vendor = b"".join(r.to_bytes(4, "little") for r in (regs[1], regs[3], regs[2]))
        assert vendor in (b"GenuineIntel", b"AuthenticAMD")
        first = first or regs
        assert regs == first
        assert e.m.stats()["sites"] == len(e.m.sites.sites)
        assert all(entry[1] == 1 for entry in e.m._code_hooks.values())
