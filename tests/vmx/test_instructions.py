"""VMX instructions in root operation: every success and error case of the SDM's
"Operation" sections (Vol. 3C "VMX Instruction Reference"), asserted from the
pseudo-code: #UD/#GP conditions, VMfailInvalid, VMfailValid(n), RFLAGS."""
import struct

import pytest

from vmxlab.arch import fields as F
from vmxlab.caps import load
from vmxlab.caps.profile import from_dict
from vmxlab.vmcs import region
from vmxlab.vmx.instructions import INVALID_POINTER, Context, VmxState

SKL = load("skylake-client")
CTX = Context()


class Phys:
    def __init__(self):
        self.mem = bytearray(1 << 20)

    def read(self, a, n):
        return bytes(self.mem[a:a + n])

    def write(self, a, data):
        self.mem[a:a + len(data)] = data


def fresh(profile=SKL):
    ph = Phys()
    for page in (0x1000, 0x2000, 0x3000):
        ph.write(page, struct.pack("<I", profile.revision_id))
    return VmxState(profile, ph.read, ph.write), ph


def on(profile=SKL):
    vmx, ph = fresh(profile)
    assert vmx.vmxon(CTX, 0x1000).kind == "succeed"
    return vmx, ph


@pytest.mark.parametrize("ctx,register,expect", [
    (Context(cr4=0), False, ("exception", 6)),                     # CR4.VMXE = 0: #UD
    (Context(cr0=0x10), False, ("exception", 6)),                  # real mode: #UD
    (Context(efer_lma=True, cs_l=False), False, ("exception", 6)),  # compatibility mode: #UD
    (Context(v8086=True), False, ("exception", 6)),
    (CTX, True, ("exception", 6)),                                 # register operand: #UD
    (Context(cpl=3), False, ("exception", 13)),                    # CPL > 0: #GP(0)
    (Context(feature_control=0x4), False, ("exception", 13)),      # not locked
    (Context(feature_control=0x1), False, ("exception", 13)),      # VMX outside SMX disabled
    (Context(cr0=0x80000001), False, ("exception", 13)),           # CR0.NE = 0: not fixed bits
])
def test_vmxon_exceptions(ctx, register, expect):
    vmx, _ = fresh()
    out = vmx.vmxon(ctx, 0x1000, register_operand=register)
    assert (out.kind, out.vector) == expect
    assert not vmx.in_vmx


def test_vmxon_fail_invalid_cases():
    vmx, ph = fresh()
    assert vmx.vmxon(CTX, 0x1008).kind == "fail_invalid"            # not 4-KiB aligned
    assert vmx.vmxon(CTX, 1 << 39).kind == "fail_invalid"           # beyond MAXPHYADDR (39)
    ph.write(0x5000, struct.pack("<I", SKL.revision_id + 1))
    assert vmx.vmxon(CTX, 0x5000).kind == "fail_invalid"            # wrong revision
    ph.write(0x5000, struct.pack("<I", SKL.revision_id | 1 << 31))
    assert vmx.vmxon(CTX, 0x5000).kind == "fail_invalid"            # bit 31 set
    out = vmx.vmxon(CTX, 0x1000)
    assert out.kind == "succeed" and vmx.in_vmx and vmx.current == INVALID_POINTER
    assert out.rflags(0xCD7) == 0x402                               # CF PF AF ZF SF OF cleared, DF kept


def test_vmxon_in_root_operation():
    vmx, _ = on()
    out = vmx.vmxon(CTX, 0x1000)
    assert out.kind == "fail_invalid"                               # no current VMCS
    vmx.vmptrld(CTX, 0x2000)
    out = vmx.vmxon(CTX, 0x1000)
    assert (out.kind, out.error) == ("fail_valid", 15)
    assert vmx.current_vmcs.values[F.VM_INSTRUCTION_ERROR] == 15
    assert out.rflags(0x2) == 0x2 | 0x40                            # ZF
    assert vmx.vmxon(Context(cpl=3), 0x1000).vector == 13


def test_instructions_outside_vmx_operation_are_ud():
    vmx, _ = fresh()
    for out in (vmx.vmxoff(CTX), vmx.vmclear(CTX, 0x2000), vmx.vmptrld(CTX, 0x2000),
                vmx.vmptrst(CTX), vmx.vmread(CTX, F.GUEST_RIP), vmx.vmwrite(CTX, F.GUEST_RIP, 1),
                vmx.vmlaunch(CTX), vmx.vmcall(CTX)):
        assert (out.kind, out.vector) == ("exception", 6)


def test_vmclear_errors_and_effect():
    vmx, ph = on()
    assert vmx.vmclear(CTX, 0x2004).kind == "fail_invalid"          # error 2, but no current VMCS
    vmx.vmptrld(CTX, 0x2000)
    out = vmx.vmclear(CTX, 0x2004)
    assert (out.kind, out.error) == ("fail_valid", 2)
    assert (vmx.vmclear(CTX, 0x1000).kind, vmx.vmclear(CTX, 0x1000).error) == ("fail_valid", 3)
    vmx.vmwrite(CTX, F.GUEST_RIP, 0x1234)
    vmx.current_vmcs.launch_state = "launched"
    assert vmx.vmclear(CTX, 0x2000).kind == "succeed"
    assert vmx.current == INVALID_POINTER                           # clearing the current VMCS
    data = ph.read(0x2000, SKL.vmcs_size)
    back = region.unpack(data, SKL)
    assert back.launch_state == "clear" and back["GUEST_RIP"] == 0x1234   # written back to memory
    assert region.revision_id(data) == SKL.revision_id


def test_vmptrld_errors_and_vmptrst():
    vmx, ph = on()
    assert vmx.vmptrld(CTX, 0x2000).kind == "succeed"
    assert vmx.vmptrst(CTX).value == 0x2000
    out = vmx.vmptrld(CTX, 0x2010)
    assert (out.kind, out.error) == ("fail_valid", 9)
    assert vmx.vmptrld(CTX, 0x1000).error == 10
    ph.write(0x4000, struct.pack("<I", 0x77))
    assert vmx.vmptrld(CTX, 0x4000).error == 11
    ph.write(0x4000, struct.pack("<I", SKL.revision_id | 1 << 31))
    assert vmx.vmptrld(CTX, 0x4000).kind == "succeed"               # shadow VMCS: Skylake has VMCS shadowing
    penryn = load("penryn")
    vmx, ph = on(penryn)
    vmx.vmptrld(CTX, 0x2000)
    ph.write(0x4000, struct.pack("<I", penryn.revision_id | 1 << 31))
    assert vmx.vmptrld(CTX, 0x4000).error == 11                     # Penryn has no VMCS shadowing
    assert vmx.vmptrld(CTX, 0x3000, register_operand=True).vector == 6


def test_vmread_vmwrite():
    vmx, _ = on()
    assert vmx.vmread(CTX, F.GUEST_RIP).kind == "fail_invalid"      # no current VMCS
    vmx.vmptrld(CTX, 0x2000)
    assert vmx.vmwrite(CTX, F.GUEST_RIP, 0xFFFF_FFFF_8100_0000).kind == "succeed"
    assert vmx.vmread(CTX, F.GUEST_RIP).value == 0xFFFF_FFFF_8100_0000
    assert vmx.vmread(CTX, F.GUEST_RIP, operand_bits=32).value == 0x8100_0000
    out = vmx.vmread(CTX, 0x2032)                                   # TSC multiplier: not on Skylake
    assert (out.kind, out.error) == ("fail_valid", 12)
    assert vmx.vmread(Context(cpl=1), F.GUEST_RIP).vector == 13


def test_vmwrite_read_only_error_13():
    msrs = dict(SKL.msrs)
    msrs[0x485] &= ~(1 << 29)
    strict = from_dict({"msrs": {hex(k): hex(x) for k, x in msrs.items()}}, "strict")
    vmx, _ = on(strict)
    vmx.vmptrld(CTX, 0x2000)
    out = vmx.vmwrite(CTX, F.VM_EXIT_REASON, 1)
    assert (out.kind, out.error) == ("fail_valid", 13)


def test_vmlaunch_needs_a_current_vmcs():
    vmx, _ = on()
    assert vmx.vmlaunch(CTX).kind == "fail_invalid"
    vmx.vmptrld(CTX, 0x2000)
    assert vmx.vmlaunch(CTX).kind == "entry"


def test_vmxoff_leaves_vmx_operation_and_writes_back():
    vmx, ph = on()
    vmx.vmptrld(CTX, 0x2000)
    vmx.vmwrite(CTX, F.HOST_RIP, 0xABC)
    assert vmx.vmxoff(CTX).kind == "succeed" and not vmx.in_vmx
    assert region.unpack(ph.read(0x2000, SKL.vmcs_size), SKL)["HOST_RIP"] == 0xABC
    assert vmx.vmxoff(CTX).vector == 6


def test_vmcall_in_root_fails_with_error_1():
    vmx, _ = on()
    vmx.vmptrld(CTX, 0x2000)
    out = vmx.vmcall(CTX)
    assert (out.kind, out.error) == ("fail_valid", 1)


def test_invvpid_types_and_operands():
    vmx, _ = on()
    vmx.vmptrld(CTX, 0x2000)
    desc = lambda vpid, la=0: struct.pack("<QQ", vpid, la)
    assert vmx.invvpid(CTX, 1, desc(1)).kind == "succeed"
    assert vmx.invvpid(CTX, 1, desc(0)).error == 28                 # VPID 0
    assert vmx.invvpid(CTX, 0, desc(1, 1 << 47)).error == 28        # non-canonical address
    assert vmx.invvpid(CTX, 1, desc(1 | 1 << 16)).error == 28       # reserved descriptor bits
    assert vmx.invvpid(CTX, 4, desc(1)).error == 28                 # no such type
    assert vmx.invvpid(CTX, 2, desc(0)).kind == "succeed"


def test_invept_unsupported_processor_is_ud():
    vmx, _ = on(load("penryn"))
    assert vmx.invept(CTX, 2, bytes(16)).vector == 6


def test_invept_types_and_eptp_validity():
    vmx, _ = on()
    vmx.vmptrld(CTX, 0x2000)
    good = 0x5000 | (3 << 3) | 6                     # WB, 4-level walk
    assert vmx.invept(CTX, 1, struct.pack("<QQ", good, 0)).kind == "succeed"
    assert vmx.invept(CTX, 1, struct.pack("<QQ", 0x5000 | (3 << 3) | 2, 0)).error == 28   # memory type 2
    assert vmx.invept(CTX, 1, struct.pack("<QQ", 0x5000 | (1 << 3) | 6, 0)).error == 28   # 2-level walk
    assert vmx.invept(CTX, 2, bytes(16)).kind == "succeed"                                  # all-context
    assert vmx.invept(CTX, 3, bytes(16)).error == 28
