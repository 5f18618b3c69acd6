"""RDMSR/WRMSR, the TSC and CPUID as the SDM specifies them (Vol. 2 RDMSR, WRMSR,
RDTSC, RDTSCP, CPUID; "Enabling and Entering VMX Operation" for
IA32_FEATURE_CONTROL; "Time-Stamp Counter")."""
import mhelpers as H

from vmxlab.machine import StopReason

GP_HANDLER = "pop r8; mov r9, [rsp]; add qword ptr [rsp], 2; iretq"    # RDMSR/WRMSR are 2 bytes


def run(e, code):
    e.handler(13, GP_HANDLER)
    a = e.code(code)
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED, st
    return a


def test_rdmsr_of_an_unknown_index_is_gp0():
    e = H.Env()
    a = run(e, "mov r8, -1; mov ecx, 0x12345; fault: rdmsr; hlt")
    assert e.reg("R8") == 0
    assert e.reg("R9") == a.labels["fault"]


def test_wrmsr_with_reserved_bits_is_gp0_and_changes_nothing():
    e = H.Env()
    # IA32_PAT: memory type 2 is reserved ("Programming the PAT")
    run(e, """
        mov r8, -1
        mov ecx, 0x277; rdmsr; mov r10, rax; mov r11, rdx
        mov ecx, 0x277; mov eax, 0x02; xor edx, edx; wrmsr
        mov ecx, 0x277; rdmsr; mov r12, rax; mov r13, rdx
        hlt""")
    assert e.reg("R8") == 0
    assert (e.reg("R12"), e.reg("R13")) == (e.reg("R10"), e.reg("R11"))
    assert (e.reg("R13") << 32 | e.reg("R12")) == 0x0007040600070406       # PAT reset value


def test_rdmsr_at_cpl3_is_gp():
    e = H.Env()
    e.handler(13, "pop r8; mov r9, 0x13; hlt")
    e.code("mov ecx, 0x10; rdmsr; hlt")
    e.user_mode()
    e.m.run(time_budget=2)
    assert e.reg("R9") == 0x13 and e.reg("R8") == 0


def test_feature_control_lock():
    e = H.Env()
    run(e, """
        mov r8, -1
        mov ecx, 0x3a; rdmsr; mov r10, rax                 # reset value 0
        mov ecx, 0x3a; mov eax, 5; xor edx, edx; wrmsr     # VMX outside SMX | lock
        mov r14, r8                                        # -1: no fault so far
        mov ecx, 0x3a; mov eax, 4; xor edx, edx; wrmsr     # locked: #GP(0)
        mov ecx, 0x3a; rdmsr; mov r12, rax
        hlt""")
    assert e.reg("R10") == 0
    assert e.reg("R14") == (1 << 64) - 1
    assert e.reg("R8") == 0
    assert e.reg("R12") == 5


def test_vmx_capability_msrs_are_the_profiles_and_read_only():
    e = H.Env()
    run(e, """
        mov ecx, 0x480; rdmsr; mov r10, rax; mov r11, rdx
        mov r8, -1
        mov ecx, 0x480; xor eax, eax; xor edx, edx; wrmsr
        hlt""")
    basic = e.m.profile.msrs[0x480]
    assert (e.reg("R11") << 32 | e.reg("R10")) == basic
    assert e.reg("R8") == 0


def test_rdtsc_after_a_tsc_write():
    e = H.Env()
    run(e, """
        mov ecx, 0x10; mov edx, 0x12; mov eax, 0x34000000; wrmsr
        rdtsc; shl rdx, 32; or rax, rdx; mov r10, rax
        rdtsc; shl rdx, 32; or rax, rdx; mov r11, rax
        mov ecx, 0xc0000103; mov eax, 0x77; xor edx, edx; wrmsr
        rdtscp; mov r12, rcx
        hlt""")
    written = 0x12_34000000
    one_second = e.m.tsc.hz
    assert written <= e.reg("R10") < written + one_second
    assert e.reg("R10") <= e.reg("R11")                 # monotonic
    assert e.reg("R12") == 0x77                          # RDTSCP: ECX = IA32_TSC_AUX


def test_tsc_write_moves_tsc_adjust():
    e = H.Env()
    run(e, """
        mov ecx, 0x10; xor edx, edx; xor eax, eax; wrmsr
        mov ecx, 0x3b; rdmsr; shl rdx, 32; or rax, rdx; mov r10, rax
        hlt""")
    # "a write to IA32_TIME_STAMP_COUNTER adds the same amount to IA32_TSC_ADJUST":
    # writing 0 to a TSC that counted up to t makes TSC_ADJUST = -t (two's complement)
    assert e.reg("R10") >> 63 == 1


def test_cpuid_reports_vmx_and_no_hypervisor():
    e = H.Env()
    run(e, """
        mov eax, 1; xor ecx, ecx; cpuid; mov r10, rcx; mov r11, rbx
        xor eax, eax; cpuid; mov r12, rbx; mov r13, rdx; mov r14, rcx
        hlt""")
    assert e.reg("R10") >> 5 & 1 == 1                   # CPUID.1:ECX.VMX
    assert e.reg("R10") >> 31 & 1 == 0                  # not running under a hypervisor
    vendor = b"".join(e.reg(r).to_bytes(4, "little") for r in ("R12", "R13", "R14"))
    assert vendor == b"GenuineIntel"


def test_cpuid_osxsave_follows_cr4():
    e = H.Env()
    run(e, """
        mov eax, 1; cpuid; mov r10, rcx
        mov rax, cr4; bts rax, 18; mov cr4, rax
        mov eax, 1; cpuid; mov r11, rcx
        hlt""")
    assert e.reg("R10") >> 27 & 1 == 0
    assert e.reg("R11") >> 27 & 1 == 1


def test_efer_lme_cannot_change_with_paging_on():
    e = H.Env()
    run(e, """
        mov r8, -1
        mov ecx, 0xc0000080; rdmsr; btr eax, 8; wrmsr     # clear LME while CR0.PG = 1
        hlt""")
    assert e.reg("R8") == 0


def test_mov_cr4_reserved_bit_is_gp():
    e = H.Env()
    e.handler(13, "pop r8; mov r9, [rsp]; add qword ptr [rsp], 3; iretq")
    a = e.code("mov r8, -1; mov rax, cr4; bts rax, 22; fault: mov cr4, rax; hlt")   # PKE: no PKU
    e.m.run(time_budget=2)
    assert e.reg("R8") == 0 and e.reg("R9") == a.labels["fault"]


def test_mov_cr8_holds_the_tpr():
    e = H.Env()
    run(e, "mov eax, 9; mov cr8, rax; mov rbx, cr8; hlt")
    assert e.reg("RBX") == 9
    assert e.state("CR8") == 9
