"""The monitor trap flag (SDM Vol. 3C "Monitor Trap Flag", "Pending MTF VM Exits",
"Activity State" of "VM Exits"): an MTF VM exit on the instruction boundary after
each instruction, after the delivery of an injected event or of a fault, after
each iteration of a REP string instruction; none after an instruction that
exits itself; MTF exits are not blocked in the HLT state."""
from vhelpers import Bench

from vmxlab.arch import controls as C
from vmxlab.arch import events as EV
from vmxlab.arch import exits as X
from vmxlab.machine import registers as REG

MTF = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS | C.CPU_BASED_MONITOR_TRAP_FLAG


def run(source, fields=None, handlers=None, limit=50, advance_other=True):
    b = Bench()
    for vector, code in (handlers or {}).items():
        b.env.handler(vector, code)
    exits = []

    def host(cpu):
        e = cpu.exit
        exits.append((e.basic, e.guest_rip, cpu.vmread("GUEST_ACTIVITY_STATE")))
        if len(exits) >= limit:
            cpu.stop("enough")
            return
        if e.basic != X.MONITOR_TRAP_FLAG and advance_other:
            cpu.vmwrite("GUEST_RIP", e.guest_rip + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
        cpu.vmresume()
    b.start(source, controls={"CPU_BASED_VM_EXEC_CONTROL": MTF}, host=host, fields=fields or {})
    stop = b.cpu.run(time_budget=10)
    return b, exits, stop


def test_one_exit_after_each_instruction_and_after_hlt_in_the_hlt_state():
    b, exits, stop = run("mov eax, 1\na1: mov ebx, 2\na2: add eax, ebx\na3: hlt\na4:")
    L = b.guest.labels
    assert exits == [(X.MONITOR_TRAP_FLAG, L["a1"], 0), (X.MONITOR_TRAP_FLAG, L["a2"], 0),
                     (X.MONITOR_TRAP_FLAG, L["a3"], 0),
                     (X.MONITOR_TRAP_FLAG, L["a4"], EV.ACTIVITY_HLT)]   # "not blocked in the HLT activity state"
    assert stop.reason.value == "halted"                  # resumed into HLT: nothing wakes it
    assert b.m.gprs.read()[REG.GPR_INDEX["RAX"]] == 3


def test_an_instruction_that_exits_gives_no_mtf_exit_for_itself():
    b, exits, _ = run("xor eax, eax\na1: cpuid\na2: nop\na3: hlt")
    L = b.guest.labels
    assert [e[:2] for e in exits[:4]] == [(X.MONITOR_TRAP_FLAG, L["a1"]), (X.CPUID, L["a1"]),
                                          (X.MONITOR_TRAP_FLAG, L["a3"]), (X.MONITOR_TRAP_FLAG, L["a3"] + 1)]


def test_a_loop_to_itself_exits_after_every_iteration():
    b, exits, _ = run("mov ecx, 3\ntop: dec ecx\nnext: jnz top\nhlt", limit=8)
    L = b.guest.labels
    assert [e[1] for e in exits[:7]] == [L["top"], L["next"], L["top"], L["next"], L["top"], L["next"],
                                         L["next"] + 2]


def test_rep_string_exits_after_each_iteration():
    b, exits, _ = run("mov rdi, 0x61000\nmov ecx, 3\nxor eax, eax\nat: rep stosb\nafter: hlt", limit=10)
    L = b.guest.labels
    rips = [e[1] for e in exits]
    assert rips[3:6] == [L["at"], L["at"], L["after"]]   # iterations 1 and 2 end at the instruction itself
    assert b.m.gprs.read()[REG.GPR_INDEX["RCX"]] == 0


def test_after_a_fault_the_exit_comes_after_its_delivery():
    # #UD from UD2 delivered through the guest IDT: the MTF exit is at the handler's
    # first instruction, before it executes
    b, exits, _ = run("ud2\nhlt", handlers={6: "h: mov r15, 6\nhlt"})
    handler = 0x50000 + 0x100 * 6
    assert exits[0] == (X.MONITOR_TRAP_FLAG, handler, 0)
    assert exits[1][1] == handler + 7                    # after mov r15, 6


def test_with_event_injection_the_exit_precedes_the_first_instruction():
    b, exits, _ = run("nop\nhlt", handlers={0x30: "mov r14, 0x30\niretq"},
                      fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(0x30, EV.INTR_TYPE_EXT_INTR),
                              "GUEST_RFLAGS": 0x202})          # an injected interrupt needs IF = 1
    assert exits[0] == (X.MONITOR_TRAP_FLAG, 0x50000 + 0x100 * 0x30, 0)


def test_a_pending_mtf_exit_is_injected_even_with_the_control_clear():
    b = Bench()
    exits = []

    def host(cpu):
        exits.append((cpu.exit.basic, cpu.exit.guest_rip))
        cpu.stop("seen")
    b.start("nop\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS},
            host=host, fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(0, EV.INTR_TYPE_OTHER_EVENT)})
    b.cpu.run(time_budget=5)
    assert exits == [(X.MONITOR_TRAP_FLAG, b.guest.labels.get("start", 0x70000))]


def test_without_the_control_there_is_no_mtf_exit():
    b = Bench()
    b.start("mov eax, 1\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS},
            host=b.record_and_resume())
    assert b.cpu.run(time_budget=5).reason.value == "halted" and b.exits == []
