"""PAUSE-loop exiting (SDM Vol. 3C "Instructions That Cause VM Exits Conditionally",
PAUSE): at CPL 0 a PAUSE within PLE_Gap TSC ticks of the previous one continues a
loop, and one more than PLE_Window ticks after the loop's first PAUSE exits with
reason PAUSE_INSTRUCTION; "PAUSE exiting" exits on every PAUSE instead."""
from vhelpers import Bench

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X

P2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
SPIN = "mov ecx, 2000000\nat: pause\ndec ecx\njnz at\nhlt"


def run(gap, window, extra_cpu=0, source=SPIN, user=False):
    b = Bench()
    fields = {"PLE_GAP": gap, "PLE_WINDOW": window}
    if user:
        b.env.set_segments(fields, ring=3)
        fields["GUEST_RSP"] = 0x9F000
    seen = []

    def host(cpu):
        seen.append((cpu.exit.basic, cpu.exit.guest_rip, cpu.gpr("RCX"), cpu.m.tsc.read()))
        cpu.stop("pause exit")
    b.start(source, controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | extra_cpu,
                              "SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_PAUSE_LOOP_EXITING},
            host=host, fields=fields)
    stop = b.cpu.run(time_budget=20)
    return b, seen, stop


def test_a_spinning_loop_exits_once_the_window_has_passed():
    # the gap is wide: every PAUSE belongs to the first one's loop
    b, seen, _ = run(gap=0xFFFFFFFF, window=20000)
    assert len(seen) == 1
    reason, rip, rcx, _ = seen[0]
    assert (reason, rip) == (X.PAUSE_INSTRUCTION, b.guest.labels["at"])
    assert 0 < rcx < 2000000                           # some iterations ran natively first


def test_a_gap_of_zero_ticks_makes_every_pause_the_first_of_a_loop():
    # a PAUSE whose distance to the previous one exceeds 0 ticks starts a new loop;
    # one at the same tick continues it with 0 ticks elapsed, not more than the window
    b, seen, stop = run(gap=0, window=0, source="mov ecx, 20000\nat: pause\ndec ecx\njnz at\nhlt")
    assert seen == [] and stop.reason.value == "halted"


def test_pause_exiting_exits_on_the_first_pause():
    b, seen, _ = run(gap=0xFFFFFFFF, window=0xFFFFFFFF, extra_cpu=C.CPU_BASED_PAUSE_EXITING)
    assert [(s[0], s[2]) for s in seen] == [(X.PAUSE_INSTRUCTION, 2000000)]


def test_pause_loops_at_cpl3_never_exit():
    b, seen, stop = run(gap=0xFFFFFFFF, window=0, user=True,
                        source="mov ecx, 20000\nat: pause\ndec ecx\njnz at\nmov eax, 1\ncpuid")
    assert [s[0] for s in seen] == [X.CPUID]           # no PAUSE exit; the loop ran out
