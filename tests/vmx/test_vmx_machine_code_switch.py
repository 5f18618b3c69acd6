"""VM exits and entries through machine-code host code (VMREAD/VMWRITE/VMRESUME in the
simulator) between a guest and a host that differ in CR3, CR4, FS base, GDTR/IDTR
limits and SYSENTER MSRs: each side sees its own state after every transition (the
transitions write only what differs: this checks that what differs is written)."""
import struct

from vmxlab.arch import fields as F
from vmxlab.guests.asm import asm
from vmxlab.vmx.cpu import VmxCpu
from vmxlab.vmx.setup import fields_from_state

from bench.vmx import _flat_machine
from vhelpers import ADVANCE_RIP

GUEST, HOST, VMXON, VMCS = 0x70000, 0x48000, 0x100000, 0x101000
GUEST_PML4, HOST_FS, GUEST_FS, OUT = 0x20000, 0x600000, 0x601000, 0x90000
LOOPS = 25

# the guest: CPUID exits; then it reads its FS page, the page its own CR3 maps at
# 2 MiB (physical 4 MiB: the host maps 2 MiB there), its CR3 and CR4
GUEST_CODE = """
top: xor eax, eax
    cpuid
    xor edx, edx
    mov rdx, qword ptr fs:[rdx]
    add r15, rdx
    mov rdx, 0x200000
    mov rdx, qword ptr [rdx]
    add r14, rdx
    mov r12, cr3
    mov r11, cr4
    dec r13
    jnz top
    vmcall
"""
# the host: records its CR3, CR4, SYSENTER_ESP, sums its FS page and what it sees at
# 2 MiB, advances GUEST_RIP, VMRESUMEs; HLT after the VMCALL exit
HOST_CODE = """
    mov rax, cr3
    mov qword ptr [rsp], rax
    mov rax, cr4
    mov qword ptr [rsp + 8], rax
    xor eax, eax
    mov rax, qword ptr fs:[rax]
    add qword ptr [rsp + 16], rax
    mov rax, 0x200000
    mov rax, qword ptr [rax]
    add qword ptr [rsp + 24], rax
    mov ecx, 0x175
    rdmsr
    mov dword ptr [rsp + 32], eax
    mov rbx, 0x4402
    vmread rax, rbx
    cmp eax, 18
    je done
""" + ADVANCE_RIP + """    vmresume
    hlt
done:
    hlt
"""


def _run(fast: bool):
    m = _flat_machine()
    q = lambda x: struct.pack("<Q", x)
    # the guest's paging: its own PML4/PDPT/PD, 2 MiB page 1 -> physical 4 MiB
    m.load(GUEST_PML4, q(0x21000 | 3))
    m.load(0x21000, q(0x22000 | 3))
    m.load(0x22000, b"".join(q(((2 if i == 1 else i) << 21) | 0x83) for i in range(512)))
    m.load(0x200000, q(0x1111))
    m.load(0x400000, q(0x2222))
    m.load(HOST_FS, q(0x30))
    m.load(GUEST_FS, q(0x500))
    for page in (VMXON, VMCS):
        m.load(page, struct.pack("<I", m.profile.revision_id))
    m.load(GUEST, asm(GUEST_CODE, GUEST).code)
    m.load(HOST, asm(HOST_CODE, HOST).code)
    cpu = VmxCpu(m)
    if not fast:
        m.fast_client = None                       # VMREAD/VMWRITE through the client's general path
    cpu.vmxon(VMXON)
    cpu.vmclear(VMCS)
    cpu.vmptrld(VMCS)
    s = m.get_state()
    s["GUEST_FS_BASE"] = HOST_FS
    values = fields_from_state(s, m.profile, host_rip=HOST, host_rsp=OUT)
    values.update({F.GUEST_RIP: GUEST, F.GUEST_RSP: 0x7F000, F.GUEST_CR3: GUEST_PML4,
                   F.GUEST_CR4: s["GUEST_CR4"] & ~(1 << 7),        # CR4.PGE clear in the guest only
                   F.GUEST_FS_BASE: GUEST_FS, F.GUEST_GDTR_LIMIT: 0x1F, F.GUEST_IDTR_LIMIT: 0x7FF,
                   F.GUEST_SYSENTER_ESP: 0x1234, F.HOST_IA32_SYSENTER_ESP: 0x5678})
    values[F.CPU_BASED_VM_EXEC_CONTROL] &= ~((1 << 15) | (1 << 16))   # no CR3-load/store exiting
    for enc, value in values.items():
        cpu.vmwrite(enc, value)
    for name, value in (("R13", LOOPS), ("R14", 0), ("R15", 0)):     # loop count, sums
        cpu.set_gpr(name, value)
    cpu.vmlaunch()
    stop = cpu.run(time_budget=60)
    return stop, cpu, m


def test_transitions_switch_cr3_cr4_segments_and_msrs_both_ways():
    for fast in (True, False):
        stop, cpu, m = _run(fast)
        assert stop.reason.value == "halted"
        g = m.get_state()
        cr4 = cpu.vmread(F.HOST_CR4)
        assert cpu.vmread(F.VM_EXIT_REASON) == 18 and cpu.exit_count == LOOPS + 1
        # the host, at every exit: its own CR3/CR4, FS base, mapping and SYSENTER_ESP
        assert m.mem.read64(OUT) == 0x10000 and m.mem.read64(OUT + 8) == cr4
        assert m.mem.read64(OUT + 16) == 0x30 * (LOOPS + 1)
        assert m.mem.read64(OUT + 24) == 0x1111 * (LOOPS + 1)
        assert m.mem.read(OUT + 32, 4) == struct.pack("<I", 0x5678)
        assert g["GUEST_CR3"] == 0x10000 and g["GUEST_FS_BASE"] == HOST_FS and g["GUEST_GDTR_LIMIT"] == 0xFFFF
        # the guest, after every entry: its own
        assert g["R15"] == 0x500 * LOOPS and g["R14"] == 0x2222 * LOOPS
        assert g["R12"] == GUEST_PML4 and g["R11"] == cr4 & ~(1 << 7)
        assert cpu.vmread(F.GUEST_SYSENTER_ESP) == 0x1234 and cpu.vmread(F.GUEST_GDTR_LIMIT) == 0x1F
        assert cpu.vmread(F.GUEST_CR3) == GUEST_PML4 and cpu.vmread(F.GUEST_FS_BASE) == GUEST_FS
