"""VMCS shadowing (SDM Vol. 3C "VMCS Shadowing"; "VMREAD", "VMWRITE" Operation):
in VMX non-root operation with "VMCS shadowing" 1, VMREAD/VMWRITE of a field whose
bit in the VMREAD/VMWRITE bitmap is 0 (and encoding bits 63:15 clear) act on the
VMCS the VMCS link pointer references; otherwise they exit."""
import struct

from vhelpers import GSTACK, GUEST, HOST, HSTACK, VMCS, VMXON, Bench

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.arch import fields as F
from vmxlab.machine import registers as REG
from vmxlab.vmx.setup import fields_from_state

SHADOW, READ_BITMAP, WRITE_BITMAP = 0x206000, 0x207000, 0x208000
CF, ZF = 1, 0x40

GUEST_CODE = """
    mov rbx, 0x681e
    vmread rax, rbx
    mov r8, rax
    pushfq
    pop r9
    mov rbx, 0x6802
    at_exit1: vmread rax, rbx
    mov rbx, 0x6c00
    mov rax, 0x77
    vmwrite rbx, rax
    mov rbx, 0x4ffe
    vmwrite rbx, rax
    pushfq
    pop r10
    mov rbx, 0x12345678
    at_exit2: vmread rax, rbx
    hlt
"""


def start(host):
    b = Bench()
    cpu, m = b.cpu, b.m
    rev = m.profile.revision_id
    m.load(SHADOW, struct.pack("<I", rev | 1 << 31))            # the shadow-VMCS indicator
    m.mem.write(READ_BITMAP, bytes(4096))
    m.mem.write(WRITE_BITMAP, bytes(4096))
    m.mem.write(READ_BITMAP + (0x6802 >> 3), bytes([1 << (0x6802 & 7)]))   # GUEST_CR3 reads exit
    cpu.vmxon(VMXON)
    cpu.vmclear(SHADOW)
    cpu.vmptrld(SHADOW)
    cpu.vmwrite("GUEST_RIP", 0x1234)
    cpu.vmclear(SHADOW)                                           # written back to its region
    cpu.vmclear(VMCS)
    cpu.vmptrld(VMCS)
    b.guest = b.env.code(GUEST_CODE, GUEST)
    values = fields_from_state(m.get_state(), m.profile, host_rip=HOST, host_rsp=HSTACK,
                               controls={"SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_SHADOW_VMCS})
    values.update({F.GUEST_RIP: GUEST, F.GUEST_RSP: GSTACK, F.VMCS_LINK_POINTER: SHADOW,
                   F.VMREAD_BITMAP: READ_BITMAP, F.VMWRITE_BITMAP: WRITE_BITMAP})
    for enc, value in values.items():
        cpu.vmwrite(enc, value)
    cpu.register_host(HOST, host)
    cpu.vmlaunch()
    return b


def reg(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


def test_shadowed_fields_are_read_and_written_in_the_shadow_vmcs():
    seen = []

    def host(cpu):
        e = cpu.exit
        seen.append((e.basic, e.guest_rip, cpu.vmread("VM_INSTRUCTION_ERROR")))
        if len(seen) == 2:
            cpu.vmptrld(SHADOW)                                   # what the guest wrote, seen by the host
            seen.append(cpu.vmread("HOST_CR0"))
            cpu.vmptrld(VMCS)
            cpu.stop("done")
            return
        cpu.vmwrite("GUEST_RIP", e.guest_rip + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
        cpu.vmresume()
    b = start(host)
    b.cpu.run(time_budget=5)
    L = b.guest.labels
    assert reg(b, "R8") == 0x1234                                  # read from the shadow VMCS
    assert not reg(b, "R9") & (CF | ZF)                            # VMsucceed
    assert seen[0][:2] == (X.VMREAD, L["at_exit1"])                # bitmap bit 1: exits
    assert reg(b, "R10") & ZF and not reg(b, "R10") & CF           # no such field: VMfailValid
    assert seen[1] == (X.VMREAD, L["at_exit2"], 12)                # bits 63:15 set: exits; error 12 in the current VMCS
    assert seen[2] == 0x77                                         # the shadowed VMWRITE
