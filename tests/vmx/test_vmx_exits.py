"""VM exits on the simulated processor: each exit with its control on (exit
information asserted from the SDM: "Basic VM-Exit Information", the qualification
and instruction-information tables) and the instruction running natively with
it off ("Instructions That Cause VM Exits Unconditionally / Conditionally")."""
import pytest

from vmxlab.arch import controls as C
from vmxlab.arch import events as EV
from vmxlab.arch import exits as X
from vmxlab.machine import registers as REG
from vhelpers import DATA, GUEST, HSTACK, Bench
from vmxlab.machine import StopReason

P2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
VPID = C.SECONDARY_EXEC_ENABLE_VPID


def run_guest(source, cpu=0, sec=0, pin=0, fields=None, advance=True, budget=5, once=False):
    """Run `source` as the guest; every exit is recorded and resumed (`once`: the
    first exit is recorded and the run stops there)."""
    b = Bench()
    controls = {"CPU_BASED_VM_EXEC_CONTROL": P2 | cpu, "SECONDARY_VM_EXEC_CONTROL": sec,
                "PIN_BASED_VM_EXEC_CONTROL": pin}
    host = (lambda c: (b.exits.append(c.exit), c.stop("first exit recorded"))) if once else b.record_and_resume(advance)
    b.start(source, controls=controls, host=host, fields=fields)
    stop = b.cpu.run(time_budget=budget)
    return b, stop


def gpr(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


def test_cpuid_exits_unconditionally_and_resumes():
    b, stop = run_guest("mov eax, 1\ncpuid\nmov ebx, 0x1234\nhlt")
    assert [e.basic for e in b.exits] == [X.CPUID]
    e = b.exits[0]
    assert e.guest_rip == GUEST + 5 and e.instruction_length == 2 and e.qualification == 0
    assert gpr(b, "RBX") == 0x1234              # the guest ran on after VMRESUME
    assert stop.reason.value == "halted"


# (guest code, primary controls, secondary controls, exit reason, qualification, length)
SIMPLE = [
    ("at: hlt", C.CPU_BASED_HLT_EXITING, 0, X.HLT, 0, 1),
    ("at: invd", 0, 0, X.INVD, 0, 2),
    ("xor ecx, ecx\nxor eax, eax\nxor edx, edx\nat: xsetbv", 0, 0, X.XSETBV, 0, 3),
    ("at: vmcall", 0, 0, X.VMCALL, 0, 3),
    ("xor ecx, ecx\nat: rdpmc", C.CPU_BASED_RDPMC_EXITING, 0, X.RDPMC, 0, 2),
    ("at: rdtsc", C.CPU_BASED_RDTSC_EXITING, 0, X.RDTSC, 0, 2),
    ("at: rdtscp", C.CPU_BASED_RDTSC_EXITING, C.SECONDARY_EXEC_ENABLE_RDTSCP, X.RDTSCP, 0, 3),
    ("at: pause", C.CPU_BASED_PAUSE_EXITING, 0, X.PAUSE_INSTRUCTION, 0, 2),
    ("at: wbinvd", 0, C.SECONDARY_EXEC_WBINVD_EXITING, X.WBINVD, 0, 2),
    ("mov rax, 0x61000\nat: invlpg [rax]", C.CPU_BASED_INVLPG_EXITING, 0, X.INVLPG, 0x61000, 3),
    ("mov rax, 0x61000\nxor ecx, ecx\nxor edx, edx\nat: monitor", C.CPU_BASED_MONITOR_EXITING, 0,
     X.MONITOR_INSTRUCTION, 0, 3),
    ("mov rax, 0x400\nat: mov dr7, rax", C.CPU_BASED_MOV_DR_EXITING, 0, X.DR_ACCESS, 0x007, 3),
    ("at: mov rbx, dr0", C.CPU_BASED_MOV_DR_EXITING, 0, X.DR_ACCESS, 0x310, 3),
    ("at: mov rax, cr3", C.CPU_BASED_CR3_STORE_EXITING, 0, X.CR_ACCESS, 0x013, 3),
    ("at: mov rax, cr8", C.CPU_BASED_CR8_STORE_EXITING, 0, X.CR_ACCESS, 0x018, 4),
    ("xor eax, eax\nat: mov cr8, rax", C.CPU_BASED_CR8_LOAD_EXITING, 0, X.CR_ACCESS, 0x008, 4),
]


@pytest.mark.parametrize("source,cpu,sec,reason,qual,length", SIMPLE, ids=[s[3] for s in SIMPLE])
def test_instruction_exits(source, cpu, sec, reason, qual, length):
    b, _ = run_guest(source + "\nhlt", cpu=cpu, sec=sec, once=True)
    e = b.exits[0]
    assert (e.basic, e.qualification, e.instruction_length) == (reason, qual, length)
    assert e.guest_rip == b.guest.labels["at"]           # RIP of the exiting instruction


@pytest.mark.parametrize("source", [
    "hlt", "rdtsc\nhlt", "pause\nhlt", "wbinvd\nhlt",
    "mov rax, 0x61000\ninvlpg [rax]\nhlt", "mov rax, 0x400\nmov dr7, rax\nhlt", "mov rax, cr3\nhlt",
    "mov rax, cr8\nhlt", "mov rax, 0x61000\nsgdt [rax]\nhlt",
])
def test_without_their_controls_they_run_natively(source):
    b, stop = run_guest(source)
    assert b.exits == [] and stop.reason.value == "halted"


def test_rdmsr_through_msr_bitmap():
    # MSR bitmap at 0x200000: bit for RDMSR of IA32_SYSENTER_CS (174H) set
    code = "mov ecx, 0x174\nrdmsr\nmov ecx, 0x175\nrdmsr\nmov r8, rax\nhlt"
    b = Bench()
    b.m.mem.write(0x200000, bytes(4096))
    b.m.mem.write(0x200000 + (0x174 >> 3), bytes([1 << (0x174 & 7)]))
    b.m.msrs.poke(0x175, 0x1234_5678)
    b.start(code, controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_USE_MSR_BITMAPS},
            host=b.record_and_resume(), fields={"MSR_BITMAP": 0x200000})
    b.cpu.run(time_budget=5)
    assert [e.basic for e in b.exits] == [X.MSR_READ]            # 175H: bit clear, read natively
    assert gpr(b, "R8") == 0x1234_5678


def test_wrmsr_exits_without_msr_bitmaps():
    b, _ = run_guest("mov ecx, 0x174\nxor eax, eax\nxor edx, edx\nwrmsr\nhlt")
    assert [(e.basic, e.instruction_length) for e in b.exits] == [(X.MSR_WRITE, 2)]


def test_io_unconditional_exiting_qualification():
    b, _ = run_guest("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nin al, 0x60\nhlt", cpu=C.CPU_BASED_UNCOND_IO_EXITING)
    out, inp = b.exits
    assert (out.basic, out.qualification, out.instruction_length) == (X.IO_INSTRUCTION, 0x03F80000, 1)
    # IN AL, imm8: size 1, IN, immediate operand (bit 6), port 0x60
    assert (inp.basic, inp.qualification, inp.instruction_length) == (X.IO_INSTRUCTION, 0x00600048, 2)
    assert b.m.uart.text() == ""                                   # the OUT never reached the UART


def test_io_bitmaps_and_native_io():
    b = Bench()
    b.m.mem.write(0x200000, bytes(8192))
    b.m.mem.write(0x200000 + (0x80 >> 3), bytes([1]))             # port 0x80 in bitmap A
    b.start("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nout 0x80, al\nhlt",
            controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_USE_IO_BITMAPS}, host=b.record_and_resume(),
            fields={"IO_BITMAP_A": 0x200000, "IO_BITMAP_B": 0x201000})
    b.cpu.run(time_budget=5)
    assert [(e.basic, e.qualification) for e in b.exits] == [(X.IO_INSTRUCTION, 0x00800040)]
    assert b.m.uart.text() == "A"


def test_rep_outsb_qualification_and_linear_address():
    b, _ = run_guest("mov rsi, 0x61000\nmov ecx, 3\nmov dx, 0xe9\nrep outsb\nhlt", cpu=C.CPU_BASED_UNCOND_IO_EXITING)
    e = b.exits[0]
    # 1 byte, OUT, string (bit 4), REP (bit 5), DX, port 0xE9
    assert e.qualification == 0x00E90030
    assert e.guest_linear == 0x61000


def test_cr0_guest_host_mask_and_read_shadow():
    # CR0.TS owned by the host, shadow TS = 1: MOV to CR0 with TS = 0 differs -> exit;
    # MOV from CR0 reads TS from the shadow.
    b = Bench()
    src = "mov rax, cr0\nmov r9, rax\nand rax, ~8\nmov cr0, rax\nhlt"
    b.start(src, controls={"CPU_BASED_VM_EXEC_CONTROL": P2}, host=b.record_and_resume(),
            fields={"CR0_GUEST_HOST_MASK": 8, "CR0_READ_SHADOW": 8})
    b.cpu.run(time_budget=5)
    e = b.exits[0]
    assert e.basic == X.CR_ACCESS and e.qualification == 0x000          # MOV to CR0 from RAX
    assert gpr(b, "R9") & 8 == 8 and b.m.ctrl.read()[REG.CR0] & 8 == 0   # shadow bit read, real TS clear


def test_cr3_target_values_avoid_exits():
    b = Bench()
    cr3 = b.m.ctrl.read()[REG.CR3]
    b.start("mov rax, cr3\nmov cr3, rax\nmov rbx, 0x10000\nmov cr3, rbx\nhlt",
            controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_CR3_LOAD_EXITING}, host=b.record_and_resume(),
            fields={"CR3_TARGET_COUNT": 1, "CR3_TARGET_VALUE0": cr3 + 0x1000})
    b.cpu.run(time_budget=5)
    assert [(e.basic, e.qualification) for e in b.exits] == [(X.CR_ACCESS, 0x003), (X.CR_ACCESS, 0x303)]


def test_rdtsc_with_tsc_offsetting_runs_natively_with_the_offset():
    b, _ = run_guest("rdtsc\nshl rdx, 32\nor rax, rdx\nhlt", cpu=C.CPU_BASED_USE_TSC_OFFSETTING,
                     fields={"TSC_OFFSET": 1 << 60})
    assert b.exits == [] and gpr(b, "RAX") >> 60 == 1


def test_rdtscp_without_enable_rdtscp_is_ud():
    b, _ = run_guest("rdtscp\nhlt", fields={"EXCEPTION_BITMAP": 1 << EV.UD}, once=True)
    e = b.exits[0]
    assert e.basic == X.EXCEPTION_NMI and e.intr_info == 0x80000306


def test_descriptor_table_exiting_instruction_information():
    b, _ = run_guest("mov rax, 0x61000\nsgdt [rax]\nstr bx\nhlt", sec=C.SECONDARY_EXEC_DESC)
    sgdt, str_ = b.exits
    assert sgdt.basic == X.GDTR_IDTR and X.INFO_DESC_TABLE.decode(sgdt.instruction_info)["identity"] == 0
    assert X.INFO_DESC_TABLE.decode(sgdt.instruction_info)["base"] == 0        # RAX
    assert sgdt.guest_linear == 0x61000
    d = X.INFO_LDT_TR.decode(str_.instruction_info)
    assert str_.basic == X.LDTR_TR and (d["identity"], d["register_operand"], d["reg1"]) == (1, 1, 3)


def test_rdrand_exiting_instruction_information():
    b, _ = run_guest("rdrand ecx\nhlt", sec=C.SECONDARY_EXEC_RDRAND_EXITING)
    e = b.exits[0]
    assert e.basic == X.RDRAND and X.INFO_RDRAND.decode(e.instruction_info) == {"reg1": 1, "operand_size": 1}


def test_vmx_instructions_in_the_guest_exit():
    b, _ = run_guest("mov ecx, 0x681e\nvmread rax, rcx\nhlt")
    e = b.exits[0]
    assert e.basic == X.VMREAD
    d = X.INFO_VMREAD_VMWRITE.decode(e.instruction_info)
    assert (d["register_operand"], d["reg1"], d["reg2"]) == (1, 0, 1)


def test_breakpoint_exception_through_the_bitmap():
    b, _ = run_guest("int3\nhlt", fields={"EXCEPTION_BITMAP": 1 << EV.BP}, advance=True)
    e = b.exits[0]
    # software exception (type 6), vector 3, no error code; instruction length 1
    assert (e.basic, e.intr_info, e.instruction_length) == (X.EXCEPTION_NMI, 0x80000603, 1)


def test_page_fault_exit_qualification_is_the_address_and_cr2_unchanged():
    b = Bench()
    b.env.set_pte(0x61, 0)                                                  # 0x61000 not present
    b.start("mov rax, 0x61008\nmov rbx, [rax]\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            host=lambda c: (b.exits.append(c.exit), c.stop("recorded")), fields={"EXCEPTION_BITMAP": 1 << EV.PF})
    b.cpu.run(time_budget=2)
    e = b.exits[0]
    # hardware exception (3), vector 14, error code valid; error code 0 (not present, read, supervisor)
    assert (e.basic, e.intr_info, e.intr_error_code, e.qualification) == (X.EXCEPTION_NMI, 0x80000B0E, 0, 0x61008)
    assert b.m.ctrl.read()[REG.CR2] == 0


def test_page_fault_error_code_mask_and_match():
    # bit 14 clear: #PF exits when (error code & mask) != match; mask = P, match = P: a
    # not-present fault (P = 0) does not match -> exit.
    b = Bench()
    b.env.set_pte(0x61, 0)
    b.start("mov rax, 0x61008\nmov rbx, [rax]\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            host=lambda c: (b.exits.append(c.exit), c.stop("recorded")),
            fields={"PAGE_FAULT_ERROR_CODE_MASK": 1, "PAGE_FAULT_ERROR_CODE_MATCH": 1})
    b.cpu.run(time_budget=2)
    assert b.exits and b.exits[0].basic == X.EXCEPTION_NMI


def test_preemption_timer_value_zero_exits_before_the_first_instruction():
    if not Bench().m.profile.can_set("PIN_BASED_VMX_PREEMPTION_TIMER"):
        pytest.skip("no VMX-preemption timer")
    b, _ = run_guest("mov eax, 1\nhlt", pin=C.PIN_BASED_VMX_PREEMPTION_TIMER,
                     fields={"VMX_PREEMPTION_TIMER_VALUE": 0}, once=True)
    assert b.exits[0].basic == X.PREEMPTION_TIMER and b.exits[0].guest_rip == GUEST


def test_interrupt_window_exiting():
    b = Bench()
    b.start("sti\nnop\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2 | C.CPU_BASED_INTR_WINDOW_EXITING},
            host=lambda cpu: (b.exits.append(cpu.exit), cpu.vmwrite("CPU_BASED_VM_EXEC_CONTROL",
                              cpu.vmread("CPU_BASED_VM_EXEC_CONTROL") & ~C.CPU_BASED_INTR_WINDOW_EXITING),
                              cpu.vmresume()))
    b.cpu.run(time_budget=2)
    # RFLAGS.IF = 0 at entry: the window opens after STI's shadow, before the HLT
    assert [e.basic for e in b.exits] == [X.INTERRUPT_WINDOW]
    assert b.exits[0].guest_rip == GUEST + 2


def test_external_interrupt_exiting_with_acknowledge():
    b = Bench()
    b.start("sti\nspin: jmp spin", controls={"CPU_BASED_VM_EXEC_CONTROL": P2, "PIN_BASED_VM_EXEC_CONTROL":
                                    C.PIN_BASED_EXT_INTR_MASK,
                                    "VM_EXIT_CONTROLS": C.VM_EXIT_HOST_ADDR_SPACE_SIZE | C.VM_EXIT_ACK_INTR_ON_EXIT},
            host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("seen")))
    b.m.raise_interrupt(0x30)
    b.cpu.run(time_budget=2)
    e = b.exits[0]
    assert (e.basic, e.intr_info) == (X.EXTERNAL_INTERRUPT, 0x80000030)    # vector acknowledged
    assert b.m.pending_interrupts == []


def test_triple_fault_exits():
    b, _ = run_guest("mov rsp, 0x1\nud2", once=True)
    # #UD: IDT gate not present -> #GP -> #DF -> triple fault
    assert b.exits[0].basic == X.TRIPLE_FAULT


def test_vm_entry_failure_invalid_guest_state_reaches_the_host():
    b = Bench()
    b.start("hlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2}, fields={"GUEST_RFLAGS": 0},
            host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("entry failed")))
    assert b.exits[0].reason == 0x80000021 and b.exits[0].qualification == 0
    assert b.m.gprs.read()[REG.RSP] == HSTACK           # host state loaded


def test_vmlaunch_with_bad_host_state_fails_valid_8():
    from vmxlab.vmx.cpu import VmxFail
    b = Bench()
    with pytest.raises(VmxFail) as e:
        b.start("hlt", fields={"HOST_CR4": 0})
    assert e.value.error == 8
    assert b.cpu.vmread("VM_INSTRUCTION_ERROR") == 8


# ---- EPT ------------------------------------------------------------------------------------
def ept_bench(extra_pages=()):
    """A guest under an identity EPT over the first 16 MiB (2-MiB pages)."""
    from vmxlab.vmx import ept as E
    b = Bench()
    nxt = [0xA00000]

    def alloc():
        nxt[0] += 0x1000
        b.m.mem.write(nxt[0], bytes(4096))
        return nxt[0]
    eptp = E.identity_map(alloc, b.m.mem.write64, 16 << 20)
    return b, eptp


def ept_pd(b, eptp):
    """The EPT page directory of guest-physical 0-1 GiB (entry i maps the 2 MiB at i << 21)."""
    pdpt = b.m.mem.read64(eptp & ~0xFFF) & ~0xFFF & ((1 << 52) - 1)
    return b.m.mem.read64(pdpt) & ~0xFFF & ((1 << 52) - 1)


def ept_controls(b):
    return {"CPU_BASED_VM_EXEC_CONTROL": P2,
            "SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENABLE_EPT | C.SECONDARY_EXEC_ENABLE_VPID}


def test_guest_runs_under_identity_ept():
    b, eptp = ept_bench()
    b.start("mov rax, 0x61000\nmov qword ptr [rax], 0x55\nmov rbx, [rax]\nhlt", controls=ept_controls(b),
            host=b.record_and_resume(), fields={"EPT_POINTER": eptp, "VIRTUAL_PROCESSOR_ID": 1})
    stop = b.cpu.run(time_budget=5)
    assert b.exits == [] and stop.reason.value == "halted"
    assert gpr(b, "RBX") == 0x55 and b.m.mem.read64(0x61000) == 0x55


def _first_ept_exit(second_pde: int, source: str):
    """`source` as a guest under ept_bench's EPT with its PD entry for guest-physical
    0x200000-0x3FFFFF replaced by `second_pde`; the first exit stops the run."""
    b, eptp = ept_bench()
    b.m.mem.write64(ept_pd(b, eptp) + 8, second_pde)
    b.start(source, controls=ept_controls(b), host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("exit")),
            fields={"EPT_POINTER": eptp, "VIRTUAL_PROCESSOR_ID": 1})
    b.cpu.run(time_budget=5)
    return b, b.exits[0]


def test_ept_violation_qualification_and_addresses():
    # EPT maps guest-physical 0x200000-0x3FFFFF read-only (a 2-MiB leaf with R|X only)
    b, e = _first_ept_exit(0x200000 | 0b101 | (6 << 3) | 0x80,
                           "mov rax, 0x200010\nmov rbx, [rax]\nmov qword ptr [rax], 1\nhlt")
    # data write (bit 1), readable (3) and executable (5) but not writable, GLA valid (7),
    # access to the translated address (8)
    assert e.basic == X.EPT_VIOLATION
    assert e.qualification == 0b10 | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 8)
    assert e.guest_physical == 0x200010 and e.guest_linear == 0x200010
    assert gpr(b, "RBX") == 0                     # the read went through
    assert b.m.mem.read64(0x200010) == 0          # the write did not


def test_ept_violation_of_a_read_modify_write_reports_a_data_write():
    # "Exit Qualification for EPT Violations": a read-modify-write "sets bit 1 (data
    # write). Whether it also sets bit 0 (data read) is implementation-specific"
    _b, e = _first_ept_exit(0, "mov rax, 0x200010\nadd qword ptr [rax], 1\nhlt")   # 0x200000-0x3FFFFF not present
    assert e.basic == X.EPT_VIOLATION
    assert e.qualification & 0b10                 # data write
    assert e.qualification & ~0b1 == 0b10 | (1 << 7) | (1 << 8)   # nothing readable/writable/executable
    assert e.guest_physical == 0x200010 and e.guest_linear == 0x200010


def test_ept_misconfiguration():
    _b, e = _first_ept_exit(0x200000 | 0b010 | (6 << 3) | 0x80,      # write-only: a misconfiguration
                            "mov rax, 0x200010\nmov rbx, [rax]\nhlt")
    assert e.basic == X.EPT_MISCONFIG and e.guest_physical == 0x200010 and e.qualification == 0


# ---- event injection ----------------------------------------------------------------------------
def test_injected_external_interrupt_is_delivered_through_the_guest_idt():
    b = Bench()
    b.env.handler(0x30, "mov r10, 0x30\niretq")
    b.start("mov r11, 1\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(0x30, EV.INTR_TYPE_EXT_INTR),
                    "GUEST_RFLAGS": 0x202})         # injecting an external interrupt needs RFLAGS.IF = 1
    b.cpu.run(time_budget=5)
    assert gpr(b, "R10") == 0x30 and gpr(b, "R11") == 1        # handler ran, then the guest code


def test_injecting_an_external_interrupt_with_if_clear_is_an_invalid_guest_state():
    b = Bench()
    b.start("hlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(0x30, EV.INTR_TYPE_EXT_INTR), "GUEST_RFLAGS": 0x2},
            host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("entry failed")))
    assert b.exits[0].reason == 0x80000021
    assert b.cpu.last_check.violations[0].id == "guest.rflags.if_for_external_interrupt" or \
        "IF" in b.cpu.last_check.violations[0].message


def test_injected_hardware_exception_with_error_code():
    b = Bench()
    b.env.handler(13, "pop r12\nmov r13, 13\nadd rsp, 0\niretq")
    b.start("mov r11, 1\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(13, EV.INTR_TYPE_HARD_EXCEPTION, True),
                    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0x1234})
    b.cpu.run(time_budget=5)
    assert (gpr(b, "R12"), gpr(b, "R13"), gpr(b, "R11")) == (0x1234, 13, 1)


def test_injected_software_interrupt_returns_after_instruction_length():
    b = Bench()
    b.env.handler(0x80, "mov r10, [rsp]\niretq", dpl=3)
    b.start("nop\nnop\nmov r11, 1\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": P2},
            fields={"VM_ENTRY_INTR_INFO_FIELD": EV.intr_info(0x80, EV.INTR_TYPE_SOFT_INTR),
                    "VM_ENTRY_INSTRUCTION_LEN": 2})
    b.cpu.run(time_budget=5)
    assert gpr(b, "R10") == GUEST + 2                           # the pushed return address


def test_entry_in_wait_for_sipi_runs_no_guest_instruction():
    """VM entry with activity state 3 (wait-for-SIPI, allowed by IA32_VMX_MISC bit 8
    on this profile): the logical processor is in wait-for-SIPI, which only a SIPI
    ends (SDM Vol. 3C "Guest Non-Register State", "Activity State"); on a machine
    with one processor none comes, so the guest never executes."""
    b = Bench()
    assert b.m.profile.misc >> 8 & 1
    b.start(f"mov rax, {DATA}\nmov qword ptr [rax], 1\nhlt", host=b.record_and_resume(),
            fields={"GUEST_ACTIVITY_STATE": 3})
    stop = b.cpu.run(time_budget=5)
    assert stop.reason == StopReason.HALTED and "wait-for-SIPI" in stop.detail
    assert b.m.mem.read64(DATA) == 0 and b.exits == []
