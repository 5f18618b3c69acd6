"""The machine grows unicorn's TLB by flushing it once enough fills have happened
(linear.py, runloop.py).  When that point is reached inside the data access of a
read-modify-write instruction, the instruction must still execute exactly once
(SDM Vol. 2 "ADD", "XADD": one read, one write of the destination).  Unicorn
2.1.4 ends a run requested to stop from inside a data fill right after the
instruction's store with RIP still at it, so a stop there would execute it twice
(found by the differential runner, docs/differential.md)."""
import pytest

from mhelpers import DATA, Env
from vmxlab.machine import StopReason


@pytest.mark.parametrize("fills_before_threshold", range(0, 6))
@pytest.mark.parametrize("insn, expected", [
    ("add byte ptr [r13], 1", 1),
    ("xadd byte ptr [r13], cl", 1),
    ("inc qword ptr [r13]", 1),
])
def test_read_modify_write_executes_once_when_the_tlb_grows(fills_before_threshold, insn, expected):
    e = Env()
    e.code(f"""mov r13, {DATA + 0x9c0:#x}
               mov ecx, 1
               inc rbx
               {insn}
               inc rbx
               hlt""")
    e.m.load(DATA, bytes(0x1000))
    s = e.m.get_state()
    s["RBX"] = 0
    e.m.set_state(s)
    e.m.flush_tlb()
    # the next fills cross the growth threshold: one of them is the data fill of `insn`
    e.m._fills_since_flush = e.m._grow_at - fills_before_threshold
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    assert e.m.mem.read(DATA + 0x9c0, 1)[0] == expected
    assert e.reg("RBX") == 2
