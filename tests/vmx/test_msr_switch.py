"""MSRs switched by VM-entry and VM-exit controls, and controls the simulator does
not model.  SDM Vol. 3C "Loading Guest Control Registers, Debug Registers, and
MSRs", "Saving Control Registers, Debug Registers, and MSRs", "Loading Host Control
Registers, Debug Registers, MSRs"."""
import pytest
from vhelpers import Bench

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.caps import load
from vmxlab.caps.profile import Profile
from vmxlab.machine import MachineNotImplemented
from vmxlab.machine import registers as REG

PERF, BNDCFGS = 0x38F, 0xD90
P2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
BITMAP = 0x200000                                  # an all-zero MSR bitmap: RDMSR/WRMSR run natively
BASE_EXIT = C.VM_EXIT_HOST_ADDR_SPACE_SIZE | C.VM_EXIT_SAVE_IA32_EFER | C.VM_EXIT_LOAD_IA32_EFER
BASE_ENTRY = C.VM_ENTRY_IA32E_MODE | C.VM_ENTRY_LOAD_IA32_EFER


def with_perf_global_save():
    """skylake-client that also allows "save IA32_PERF_GLOBAL_CTRL" (VM-exit control 30)."""
    p = load("skylake-client")
    msrs = dict(p.msrs)
    for index in (0x483, 0x48F):
        msrs[index] |= C.VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL << 32
    return Profile("skylake+save-perf", msrs, p.maxphyaddr, p.cpuid)


def bench(source, entry=0, exit=0, fields=None, profile=None, host=None):
    b = Bench(profile)
    b.m.mem.write(BITMAP, bytes(4096))
    seen = []

    def record(cpu):
        seen.append((cpu.exit.basic, cpu.m.msrs.peek(PERF), cpu.vmread("GUEST_IA32_PERF_GLOBAL_CTRL"),
                     cpu.vmread("GUEST_BNDCFGS") if cpu.profile.can_set("VM_ENTRY_LOAD_BNDCFGS") else None))
        cpu.vmwrite("GUEST_RIP", cpu.vmread("GUEST_RIP") + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
        cpu.vmresume()
    b.start(source + "\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_USE_MSR_BITMAPS,
                                        "VM_EXIT_CONTROLS": BASE_EXIT | exit, "VM_ENTRY_CONTROLS": BASE_ENTRY | entry},
            host=host or record, fields={"MSR_BITMAP": BITMAP, **(fields or {})})
    stop = b.cpu.run(time_budget=5)
    assert stop.reason.value == "halted", stop
    return b, seen


def gpr(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


def test_entry_loads_and_exit_loads_perf_global_ctrl():
    # entry: guest value 3; the guest writes 7; the exit loads the host value 1 without
    # saving (no "save" control); the next entry loads the guest field again: 3
    b, seen = bench("mov ecx, 0x38f\nrdmsr\nmov r8, rax\nmov eax, 7\nxor edx, edx\nwrmsr\ncpuid\n"
                    "mov ecx, 0x38f\nrdmsr\nmov r9, rax",
                    entry=C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL, exit=C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL,
                    fields={"GUEST_IA32_PERF_GLOBAL_CTRL": 3, "HOST_IA32_PERF_GLOBAL_CTRL": 1})
    assert gpr(b, "R8") == 3
    assert [s[:3] for s in seen] == [(X.CPUID, 1, 3)]      # host value loaded; field not saved
    assert gpr(b, "R9") == 3


def test_save_perf_global_ctrl_control_saves_the_guest_value():
    b, seen = bench("mov ecx, 0x38f\nmov eax, 5\nxor edx, edx\nwrmsr\ncpuid\nmov ecx, 0x38f\nrdmsr\nmov r9, rax",
                    entry=C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL,
                    exit=C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL | C.VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL,
                    fields={"GUEST_IA32_PERF_GLOBAL_CTRL": 3, "HOST_IA32_PERF_GLOBAL_CTRL": 1},
                    profile=with_perf_global_save())
    assert [s[:3] for s in seen] == [(X.CPUID, 1, 5)]      # saved, then the host value loaded
    assert gpr(b, "R9") == 5                                # and loaded back by the entry


def test_without_the_controls_the_msr_is_not_switched():
    b, seen = bench("mov ecx, 0x38f\nmov eax, 5\nxor edx, edx\nwrmsr\ncpuid",
                    fields={"GUEST_IA32_PERF_GLOBAL_CTRL": 3, "HOST_IA32_PERF_GLOBAL_CTRL": 1})
    assert [s[:3] for s in seen] == [(X.CPUID, 5, 3)]      # the guest's value stays; field untouched
    assert b.m.msrs.peek(PERF) == 5


def test_bndcfgs_is_saved_on_every_exit_where_its_controls_exist():
    # skylake-client supports "load IA32_BNDCFGS": every exit saves the MSR, even with
    # both controls 0; "clear IA32_BNDCFGS" then clears it for the host
    b, seen = bench("mov ecx, 0xd90\nmov eax, 0x1001\nxor edx, edx\nwrmsr\ncpuid")
    assert seen[0][3] == 0x1001 and b.m.msrs.peek(BNDCFGS) == 0x1001
    b, seen = bench("mov ecx, 0xd90\nrdmsr\nmov r8, rax\nmov eax, 0x2001\nxor edx, edx\nwrmsr\ncpuid\n"
                    "mov ecx, 0xd90\nrdmsr\nmov r9, rax",
                    entry=C.VM_ENTRY_LOAD_BNDCFGS, exit=C.VM_EXIT_CLEAR_BNDCFGS, fields={"GUEST_BNDCFGS": 0x5001})
    assert gpr(b, "R8") == 0x5001                           # loaded by VM entry
    assert seen[0][3] == 0x2001                             # saved by the exit
    assert gpr(b, "R9") == 0x2001                           # the saved value loaded back


def test_clear_bndcfgs_leaves_zero_for_the_host():
    def stop_in_host(cpu):
        cpu.stop("look at the host")
    bb = Bench()
    bb.m.mem.write(BITMAP, bytes(4096))
    bb.start("mov ecx, 0xd90\nmov eax, 0x3001\nxor edx, edx\nwrmsr\ncpuid\nhlt",
             controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_USE_MSR_BITMAPS,
                       "VM_EXIT_CONTROLS": BASE_EXIT | C.VM_EXIT_CLEAR_BNDCFGS, "VM_ENTRY_CONTROLS": BASE_ENTRY},
             host=stop_in_host, fields={"MSR_BITMAP": BITMAP})
    bb.cpu.run(time_budget=5)
    assert bb.cpu.exit.basic == X.CPUID
    assert bb.m.msrs.peek(BNDCFGS) == 0                     # cleared on the exit
    assert bb.cpu.vmread("GUEST_BNDCFGS") == 0x3001


@pytest.mark.parametrize("profile,cpu,sec,name", [
    ("skylake-client", 0, C.SECONDARY_EXEC_ENCLS_EXITING, "SECONDARY_EXEC_ENCLS_EXITING"),
    ("icelake-server", C.CPU_BASED_TPR_SHADOW, C.SECONDARY_EXEC_APIC_REGISTER_VIRT,
     "SECONDARY_EXEC_APIC_REGISTER_VIRT"),
])
def test_a_control_not_modelled_stops_vm_entry_with_its_name(profile, cpu, sec, name):
    b = Bench(profile)
    b.m.mem.write(BITMAP, bytes(4096))
    b.m.mem.write(0x201000, bytes(4096))
    with pytest.raises(MachineNotImplemented, match=name):
        b.start("hlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | cpu, "SECONDARY_VM_EXEC_CONTROL": sec},
                fields={"VIRTUAL_APIC_PAGE_ADDR": 0x201000})
    assert not b.cpu.vmx.non_root                            # nothing entered
    assert b.cpu.vmx.current_vmcs.launch_state == "clear"


def test_a_secondary_control_counts_only_when_secondary_controls_are_active():
    b = Bench()
    b.m.mem.write(BITMAP, bytes(4096))
    b.start("hlt", controls={"CPU_BASED_VM_EXEC_CONTROL": 0},
            fields={"SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENCLS_EXITING})
    assert b.cpu.run(time_budget=5).reason.value == "halted"


def test_a_control_not_modelled_written_by_host_code_stops_the_vmresume():
    def enable_encls_exiting(cpu):
        cpu.vmwrite("SECONDARY_VM_EXEC_CONTROL",
                    cpu.vmread("SECONDARY_VM_EXEC_CONTROL") | C.SECONDARY_EXEC_ENCLS_EXITING)
        cpu.vmresume()
    b = Bench()
    b.start("cpuid\nhlt", host=enable_encls_exiting)
    with pytest.raises(MachineNotImplemented, match="SECONDARY_EXEC_ENCLS_EXITING"):
        b.cpu.run(time_budget=5)
    assert not b.cpu.vmx.non_root and b.cpu.exit.basic == X.CPUID   # still in the host after the exit
