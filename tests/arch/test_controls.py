"""Control bits against the SDM tables of VM-execution, VM-exit and VM-entry controls."""
import pytest

from vmxlab.arch import controls as C
from vmxlab.arch import fields as F


@pytest.mark.parametrize("name,field,bit", [
    ("PIN_BASED_EXT_INTR_MASK", "PIN_BASED_VM_EXEC_CONTROL", 0),
    ("PIN_BASED_NMI_EXITING", "PIN_BASED_VM_EXEC_CONTROL", 3),
    ("PIN_BASED_VIRTUAL_NMIS", "PIN_BASED_VM_EXEC_CONTROL", 5),
    ("PIN_BASED_VMX_PREEMPTION_TIMER", "PIN_BASED_VM_EXEC_CONTROL", 6),
    ("PIN_BASED_POSTED_INTR", "PIN_BASED_VM_EXEC_CONTROL", 7),
    ("CPU_BASED_HLT_EXITING", "CPU_BASED_VM_EXEC_CONTROL", 7),
    ("CPU_BASED_CR3_LOAD_EXITING", "CPU_BASED_VM_EXEC_CONTROL", 15),
    ("CPU_BASED_ACTIVATE_TERTIARY_CONTROLS", "CPU_BASED_VM_EXEC_CONTROL", 17),
    ("CPU_BASED_TPR_SHADOW", "CPU_BASED_VM_EXEC_CONTROL", 21),
    ("CPU_BASED_UNCOND_IO_EXITING", "CPU_BASED_VM_EXEC_CONTROL", 24),
    ("CPU_BASED_USE_MSR_BITMAPS", "CPU_BASED_VM_EXEC_CONTROL", 28),
    ("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", "CPU_BASED_VM_EXEC_CONTROL", 31),
    ("SECONDARY_EXEC_ENABLE_EPT", "SECONDARY_VM_EXEC_CONTROL", 1),
    ("SECONDARY_EXEC_ENABLE_RDTSCP", "SECONDARY_VM_EXEC_CONTROL", 3),
    ("SECONDARY_EXEC_ENABLE_VPID", "SECONDARY_VM_EXEC_CONTROL", 5),
    ("SECONDARY_EXEC_UNRESTRICTED_GUEST", "SECONDARY_VM_EXEC_CONTROL", 7),
    ("SECONDARY_EXEC_ENABLE_INVPCID", "SECONDARY_VM_EXEC_CONTROL", 12),
    ("SECONDARY_EXEC_ENABLE_PML", "SECONDARY_VM_EXEC_CONTROL", 17),
    ("SECONDARY_EXEC_ENABLE_XSAVES", "SECONDARY_VM_EXEC_CONTROL", 20),
    ("SECONDARY_EXEC_TSC_SCALING", "SECONDARY_VM_EXEC_CONTROL", 25),
    ("TERTIARY_EXEC_IPI_VIRT", "TERTIARY_VM_EXEC_CONTROL", 4),
    ("VM_EXIT_HOST_ADDR_SPACE_SIZE", "VM_EXIT_CONTROLS", 9),
    ("VM_EXIT_ACK_INTR_ON_EXIT", "VM_EXIT_CONTROLS", 15),
    ("VM_EXIT_LOAD_IA32_EFER", "VM_EXIT_CONTROLS", 21),
    ("VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", "VM_EXIT_CONTROLS", 22),
    ("VM_EXIT_LOAD_CET_STATE", "VM_EXIT_CONTROLS", 28),
    ("VM_ENTRY_LOAD_DEBUG_CONTROLS", "VM_ENTRY_CONTROLS", 2),
    ("VM_ENTRY_IA32E_MODE", "VM_ENTRY_CONTROLS", 9),
    ("VM_ENTRY_LOAD_IA32_EFER", "VM_ENTRY_CONTROLS", 15),
    ("VM_ENTRY_LOAD_IA32_PKRS", "VM_ENTRY_CONTROLS", 22),
])
def test_bits(name, field, bit):
    c = C.by_name(name)
    assert (c.field, c.bit) == (field, bit)
    assert getattr(C, name) == 1 << bit


@pytest.mark.parametrize("seed_name,name", [
    ("CPU_BASED_ACTIVATE_MSR_BITMAP", "CPU_BASED_USE_MSR_BITMAPS"),
    ("CPU_BASED_CTL2_ENABLE_EPT", "SECONDARY_EXEC_ENABLE_EPT"),
    ("CPU_BASED_CTL2_RDTSCP", "SECONDARY_EXEC_ENABLE_RDTSCP"),
    ("CPU_BASED_CTL2_ENABLE_INVPCID", "SECONDARY_EXEC_ENABLE_INVPCID"),
    ("CPU_BASED_CTL2_ENABLE_XSAVE_XRSTORS", "SECONDARY_EXEC_ENABLE_XSAVES"),
    ("CPU_BASED_CTL2_ENABLE_VPID", "SECONDARY_EXEC_ENABLE_VPID"),
    ("VM_EXIT_IA32E_MODE", "VM_EXIT_HOST_ADDR_SPACE_SIZE"),
])
def test_seed_aliases(seed_name, name):
    assert C.by_name(seed_name).name == name


def test_no_two_names_for_one_bit():
    seen = {}
    for c in C.CONTROLS:
        key = (c.field, c.bit)
        assert key not in seen, f"{c.name} and {seen[key]}"
        seen[key] = c.name
        assert c.bit < C.CONTROL_FIELDS[c.field].bits
        assert F.by_name(c.field).type == "control"


def test_default1_classes_appendix_a2():
    assert C.CONTROL_FIELDS["PIN_BASED_VM_EXEC_CONTROL"].default1 == 0b10110          # bits 1, 2, 4
    assert C.CONTROL_FIELDS["CPU_BASED_VM_EXEC_CONTROL"].default1 == sum(
        1 << b for b in (1, 4, 5, 6, 8, 13, 14, 15, 16, 26))
    assert C.CONTROL_FIELDS["VM_EXIT_CONTROLS"].default1 == sum(
        1 << b for b in (*range(9), 10, 11, 13, 14, 16, 17))
    assert C.CONTROL_FIELDS["VM_ENTRY_CONTROLS"].default1 == sum(1 << b for b in (*range(9), 12))
    # the named controls in a default1 class (A.2): CR3-load/store exiting, save/load debug controls
    in_default1 = {c.name for c in C.CONTROLS if C.CONTROL_FIELDS[c.field].default1 & c.mask}
    assert in_default1 == {"CPU_BASED_CR3_LOAD_EXITING", "CPU_BASED_CR3_STORE_EXITING",
                           "VM_EXIT_SAVE_DEBUG_CONTROLS", "VM_ENTRY_LOAD_DEBUG_CONTROLS"}


def test_names_of():
    assert C.names_of("PIN_BASED_VM_EXEC_CONTROL", 0x17) == ["PIN_BASED_EXT_INTR_MASK", "bit 1", "bit 2", "bit 4"]
