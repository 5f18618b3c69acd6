"""Exit reasons, qualifications, instruction information and VM-instruction errors
against SDM Appendix C, "Basic VM-Exit Information" and "VM Instruction Error Numbers"."""
import pytest

from vmxlab.arch import events as E
from vmxlab.arch import exits as X
from vmxlab.arch import instruction_errors as ERR


@pytest.mark.parametrize("number,name", [
    (0, "EXCEPTION_NMI"), (1, "EXTERNAL_INTERRUPT"), (2, "TRIPLE_FAULT"), (10, "CPUID"),
    (12, "HLT"), (18, "VMCALL"), (28, "CR_ACCESS"), (29, "DR_ACCESS"), (30, "IO_INSTRUCTION"),
    (31, "MSR_READ"), (32, "MSR_WRITE"), (33, "INVALID_STATE"), (34, "MSR_LOAD_FAIL"),
    (48, "EPT_VIOLATION"), (49, "EPT_MISCONFIG"), (52, "PREEMPTION_TIMER"), (55, "XSETBV"),
    (63, "XSAVES"), (74, "BUS_LOCK"), (75, "NOTIFY"),
])
def test_reasons(number, name):
    assert X.REASONS[number].name == name
    assert X.lookup(name).number == number
    assert X.lookup(f"EXIT_REASON_{name}").number == number


def test_reserved_reason_numbers_absent():
    for n in (35, 38, 42, 65, 71):
        assert n not in X.REASONS


def test_exit_reason_field_flags():
    d = X.EXIT_REASON.decode(0x80000021)
    assert d["basic"] == 33 and d["entry_failure"] == 1


def test_cr_access_qualification():
    # MOV CR4, RCX: CR 4, access type 0 (MOV to CR), GPR 1 (RCX)
    q = X.QUAL_CR_ACCESS.encode(cr=4, access=0, gpr=1)
    assert q == 0x104
    assert dict(X.QUAL_CR_ACCESS.describe(0x104))["gpr"] == "RCX"
    # LMSW from memory with source 0x0001: access type 3, bit 6, bits 31:16
    assert X.QUAL_CR_ACCESS.encode(access=3, lmsw_memory=1, lmsw_source=1) == 0x10070


def test_io_qualification():
    # OUT DX, AL to port 0x3f8: size 1 (0), OUT (0), not string, DX operand
    assert X.QUAL_IO.encode(size=0, direction=0, port=0x3F8) == 0x03F80000
    # REP INSD, port 0x60 immediate? (INS has only DX): 4 bytes (3), IN, string, REP
    q = X.QUAL_IO.encode(size=3, direction=1, string=1, rep=1, port=0x60)
    assert q == 0x00600000 | 3 | 8 | 16 | 32


def test_ept_violation_qualification():
    d = X.QUAL_EPT_VIOLATION.decode(0x181)   # read, GLA valid, translation
    assert (d["read"], d["write"], d["gla_valid"], d["gla_translation"]) == (1, 0, 1, 1)


def test_instruction_info_vmread():
    # VMREAD RAX (reg1 bits 6:3) <- encoding in RCX (reg2 bits 31:28), register form (bit 10)
    info = X.INFO_VMREAD_VMWRITE.encode(reg1=0, register_operand=1, reg2=1, address_size=2)
    assert info == (1 << 10) | (1 << 28) | (2 << 7)


def test_vm_instruction_errors():
    assert ERR.ERRORS[7].name == "VMXERR_ENTRY_INVALID_CONTROL_FIELD"
    assert ERR.ERRORS[8].name == "VMXERR_ENTRY_INVALID_HOST_STATE_FIELD"
    assert "host-state" in ERR.ERRORS[8].meaning
    assert ERR.lookup("ENTRY_EVENTS_BLOCKED_BY_MOV_SS").number == 26
    assert sorted(ERR.ERRORS) == list(range(1, 29))


def test_interruption_info():
    # #GP with error code, hardware exception: valid | type 3 | deliver code | vector 13
    assert E.intr_info(13, E.INTR_TYPE_HARD_EXCEPTION, True) == 0x80000B0D
    assert E.ERROR_CODE_VECTORS >= {8, 10, 11, 12, 13, 14, 17, 21}
    assert 0 not in E.ERROR_CODE_VECTORS and 6 not in E.ERROR_CODE_VECTORS
