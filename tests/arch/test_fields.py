"""VMCS field table against the SDM's encoding rules (Vol. 3C "VMREAD, VMWRITE, and
Encodings of VMCS Fields") and spot values from Vol. 3D Appendix B."""
from collections import Counter

import pytest

from vmxlab.arch import fields as F


def test_no_duplicate_names_or_encodings():
    names = [f.name for f in F.FIELDS]
    encs = [f.encoding for f in F.FIELDS]
    assert len(set(names)) == len(names)
    assert len(set(encs)) == len(encs)


@pytest.mark.parametrize("field", F.FIELDS, ids=lambda f: f.name)
def test_width_type_index_agree_with_encoding_bits(field):
    enc = field.encoding
    assert enc & 1 == 0, "tables list full-access encodings"
    assert enc & 0x1000 == 0 and enc >> 15 == 0, "bit 12 and bits 31:15 are reserved"
    width = ["16", "64", "32", "natural"][(enc >> 13) & 3]
    ftype = ["control", "read-only", "guest", "host"][(enc >> 10) & 3]
    assert field.width == width
    assert field.type == ftype
    assert field.index == (enc >> 1) & 0x1FF
    d = F.decode_encoding(enc)
    assert (d.width, d.type, d.index, d.access, d.reserved_bits) == (width, ftype, field.index, "full", 0)


def test_counts_per_group():
    counts = Counter((f.width, f.type) for f in F.FIELDS)
    assert counts == {
        ("16", "control"): 5, ("16", "guest"): 11, ("16", "host"): 7,
        ("64", "control"): 38, ("64", "read-only"): 2, ("64", "guest"): 21, ("64", "host"): 12,
        ("32", "control"): 19, ("32", "read-only"): 8, ("32", "guest"): 23, ("32", "host"): 1,
        ("natural", "control"): 8, ("natural", "read-only"): 6, ("natural", "guest"): 23,
        ("natural", "host"): 15,
    }
    assert 175 <= len(F.FIELDS) <= 210


@pytest.mark.parametrize("name,encoding", [
    # spot values from SDM Appendix B
    ("VIRTUAL_PROCESSOR_ID", 0x0000), ("GUEST_ES_SELECTOR", 0x0800), ("GUEST_TR_SELECTOR", 0x080E),
    ("HOST_TR_SELECTOR", 0x0C0C), ("IO_BITMAP_A", 0x2000), ("MSR_BITMAP", 0x2004),
    ("EPT_POINTER", 0x201A), ("TSC_MULTIPLIER", 0x2032), ("TERTIARY_VM_EXEC_CONTROL", 0x2034),
    ("ENCLV_EXITING_BITMAP", 0x2036), ("PCONFIG_EXITING_BITMAP", 0x203E), ("HLAT_POINTER", 0x2040),
    ("PID_POINTER_TABLE", 0x2042), ("SECONDARY_VM_EXIT_CONTROLS", 0x2044),
    ("IA32_SPEC_CTRL_MASK", 0x204A), ("IA32_SPEC_CTRL_SHADOW", 0x204C),
    ("GUEST_PHYSICAL_ADDRESS", 0x2400), ("VMCS_LINK_POINTER", 0x2800), ("GUEST_IA32_EFER", 0x2806),
    ("GUEST_PDPTR3", 0x2810), ("GUEST_IA32_LBR_CTL", 0x2816), ("GUEST_IA32_PKRS", 0x2818),
    ("HOST_IA32_EFER", 0x2C02), ("HOST_IA32_PKRS", 0x2C06),
    ("PIN_BASED_VM_EXEC_CONTROL", 0x4000), ("CPU_BASED_VM_EXEC_CONTROL", 0x4002),
    ("VM_EXIT_CONTROLS", 0x400C), ("VM_ENTRY_CONTROLS", 0x4012), ("SECONDARY_VM_EXEC_CONTROL", 0x401E),
    ("NOTIFY_WINDOW", 0x4024), ("VM_INSTRUCTION_ERROR", 0x4400), ("VM_EXIT_REASON", 0x4402),
    ("VMX_INSTRUCTION_INFO", 0x440E), ("GUEST_INTERRUPTIBILITY_INFO", 0x4824),
    ("GUEST_ACTIVITY_STATE", 0x4826), ("GUEST_SMBASE", 0x4828), ("GUEST_SYSENTER_CS", 0x482A),
    ("VMX_PREEMPTION_TIMER_VALUE", 0x482E), ("HOST_IA32_SYSENTER_CS", 0x4C00),
    ("CR0_GUEST_HOST_MASK", 0x6000), ("CR3_TARGET_VALUE3", 0x600E), ("EXIT_QUALIFICATION", 0x6400),
    ("GUEST_LINEAR_ADDRESS", 0x640A), ("GUEST_CR0", 0x6800), ("GUEST_RIP", 0x681E),
    ("GUEST_RFLAGS", 0x6820), ("GUEST_INTR_SSP_TABLE", 0x682C), ("HOST_CR4", 0x6C04),
    ("HOST_RSP", 0x6C14), ("HOST_RIP", 0x6C16), ("HOST_INTR_SSP_TABLE", 0x6C1C),
])
def test_sdm_encodings(name, encoding):
    assert F.by_name(name).encoding == encoding
    assert getattr(F, name) == encoding


@pytest.mark.parametrize("alias,name", [
    ("Guest ES selector", "GUEST_ES_SELECTOR"),
    ("guest-rip", "GUEST_RIP"),
    ("HOST_EFER", "HOST_IA32_EFER"),          # the seed's name
    ("GUEST_EFER", "GUEST_IA32_EFER"),        # the seed's name
    ("EPT pointer", "EPT_POINTER"),           # SDM name without the acronym
    ("Virtual-processor identifier", "VIRTUAL_PROCESSOR_ID"),
    ("VPID", "VIRTUAL_PROCESSOR_ID"),
    ("0x681e", "GUEST_RIP"),
    ("Guest interruptibility state", "GUEST_INTERRUPTIBILITY_INFO"),
])
def test_aliases(alias, name):
    assert F.lookup(alias).name == name


def test_unknown_names():
    assert F.lookup("GUEST_FOO") is None
    assert F.lookup("0x6801") is None        # the HIGH encoding of no 64-bit field
    assert F.lookup(0x2001) is None          # lookup takes full encodings


def test_decode_encoding_high_and_reserved():
    d = F.decode_encoding(0x2001)
    assert (d.access, d.width, d.type, d.index) == ("high", "64", "control", 0)
    assert F.decode_encoding(0x1_681E).reserved_bits == 0x1_0000
    assert F.decode_encoding(0x781E).reserved_bits == 0x1000
