"""VMREAD/VMWRITE data semantics (Vol. 3C VMREAD and VMWRITE "Operation")."""
import pytest

from vmxlab.arch import fields as F
from vmxlab.caps import load
from vmxlab.caps.profile import from_dict
from vmxlab.errors import BadInput
from vmxlab.vmcs import VmInstructionError, Vmcs, vmread, vmwrite

SKL = load("skylake-client")


def test_width_truncation_on_vmwrite_and_zero_extension_on_vmread():
    v = Vmcs()
    vmwrite(v, F.GUEST_CS_SELECTOR, 0xDEAD_0010, SKL)            # high source bits ignored
    assert vmread(v, F.GUEST_CS_SELECTOR, SKL) == 0x0010
    vmwrite(v, F.GUEST_CS_LIMIT, 0x1_FFFF_FFFF, SKL)
    assert v.values[F.GUEST_CS_LIMIT] == 0xFFFF_FFFF


def test_high_access_of_64_bit_fields():
    v = Vmcs()
    vmwrite(v, F.TSC_OFFSET, 0x1122_3344_5566_7788, SKL)
    assert vmread(v, F.TSC_OFFSET | 1, SKL) == 0x1122_3344
    vmwrite(v, F.TSC_OFFSET | 1, 0xAABB_CCDD, SKL)                # low half kept
    assert v.values[F.TSC_OFFSET] == 0xAABB_CCDD_5566_7788
    with pytest.raises(VmInstructionError) as e:
        vmread(v, F.GUEST_RIP | 1, SKL)                           # HIGH only for 64-bit fields
    assert e.value.number == 12


def test_operand_size_32():
    v = Vmcs()
    vmwrite(v, F.GUEST_RIP, 0xFFFF_FFFF_8000_1000, SKL)
    assert vmread(v, F.GUEST_RIP, SKL, operand_bits=32) == 0x8000_1000
    vmwrite(v, F.GUEST_RIP, 0xFFFF_FFFF_8000_1000, SKL, operand_bits=32)  # field high bits cleared
    assert v.values[F.GUEST_RIP] == 0x8000_1000


def test_read_only_fields_error_13_unless_misc_bit_29():
    v = Vmcs()
    assert SKL.misc >> 29 & 1      # the i7-6700K dump reports IA32_VMX_MISC bit 29 = 1
    vmwrite(v, F.VM_EXIT_REASON, 12, SKL)
    assert vmread(v, F.VM_EXIT_REASON, SKL) == 12
    msrs = dict(SKL.msrs)
    msrs[0x485] &= ~(1 << 29)
    strict = from_dict({"msrs": {hex(k): hex(x) for k, x in msrs.items()}}, "strict")
    with pytest.raises(VmInstructionError) as e:
        vmwrite(v, F.VM_EXIT_REASON, 12, strict)
    assert e.value.number == 13


@pytest.mark.parametrize("encoding", [
    0x2032,        # TSC_MULTIPLIER: the i7-6700K has no TSC scaling
    0x2034,        # TERTIARY_VM_EXEC_CONTROL: no tertiary controls
    0x6830,        # no such field
    0x1_681E,      # reserved encoding bits
])
def test_unsupported_component_error_12(encoding):
    with pytest.raises(VmInstructionError) as e:
        vmread(Vmcs(), encoding, SKL)
    assert e.value.number == 12


def test_item_access_is_strict():
    v = Vmcs()
    with pytest.raises(BadInput, match="wider than the 16-bit field"):
        v["GUEST_ES_SELECTOR"] = 0x10000
    with pytest.raises(BadInput, match="unknown VMCS field"):
        v["NOPE"] = 1
    v["VMCS_LINK_POINTER"] = -1
    assert v["VMCS_LINK_POINTER"] == (1 << 64) - 1
    with pytest.raises(BadInput):
        v["GUEST_ES_SELECTOR"] = -0x8001
