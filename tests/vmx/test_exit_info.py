"""Instruction information and qualifications from decoded instructions, worked out
from the SDM's tables for hand-encoded instructions."""
import iced_x86 as I

from vmxlab.arch import exits as X
from vmxlab.vmx import exit_info as E


def dec(hexbytes, bitness=64):
    return I.Decoder(bitness, bytes.fromhex(hexbytes)).decode()


def test_vmread_register_form():
    insn = dec("0f78c8")           # vmread rax, rcx: r/m = RAX (reg1), encoding in RCX (reg2)
    info = E.instruction_information(X.VMREAD, insn, 64)
    assert info == (0 << 3) | (1 << 10) | (1 << 28)     # address size etc. undefined for registers: 0
    assert not E.has_memory_operand(insn)


def test_vmwrite_memory_form():
    insn = dec("0f790c24")         # vmwrite rcx, [rsp]: encoding in RCX, source in memory [RSP]
    d = X.INFO_VMREAD_VMWRITE.decode(E.instruction_information(X.VMWRITE, insn, 64))
    assert (d["register_operand"], d["reg2"], d["base"], d["base_invalid"], d["index_invalid"]) == (0, 1, 4, 0, 1)
    assert (d["segment"], d["address_size"]) == (2, 2)   # [RSP] defaults to SS; 64-bit addressing


def test_vmptrld_memory_parts_and_displacement():
    insn = dec("0fc7b48b78560000")  # vmptrld [rbx+rcx*4+0x5678]
    d = X.INFO_VMX_MEM.decode(E.instruction_information(X.VMPTRLD, insn, 64))
    assert (d["scaling"], d["index"], d["base"], d["segment"], d["address_size"]) == (2, 1, 3, 3, 2)
    assert E.displacement(insn) == 0x5678
    insn = dec("67660fc7740810")    # vmclear [eax+ecx+0x10] (32-bit addressing)
    d = X.INFO_VMX_MEM.decode(E.instruction_information(X.VMCLEAR, insn, 64))
    assert d["address_size"] == 1 and d["base"] == 0 and d["index"] == 1
    insn = dec("0fc73584000000")    # vmptrld [rip+0x84]: displacement is the rel field
    assert E.displacement(insn) == 0x84


def test_invept_register_operand_in_reg2():
    insn = dec("660f380816")        # invept rdx, [rsi]
    d = X.INFO_INVEPT.decode(E.instruction_information(X.INVEPT, insn, 64))
    assert (d["reg2"], d["base"], d["index_invalid"]) == (2, 6, 1)


def test_rdrand_and_descriptor_tables():
    insn = dec("480fc7f0")          # rdrand rax
    assert X.INFO_RDRAND.decode(E.instruction_information(X.RDRAND, insn, 64)) == {"reg1": 0, "operand_size": 2}
    insn = dec("0f0110")            # lgdt [rax]
    d = X.INFO_DESC_TABLE.decode(E.instruction_information(X.GDTR_IDTR, insn, 64))
    assert (d["identity"], d["base"]) == (2, 0)
    insn = dec("0f00d8")            # ltr ax
    d = X.INFO_LDT_TR.decode(E.instruction_information(X.LDTR_TR, insn, 64))
    assert (d["identity"], d["register_operand"], d["reg1"]) == (3, 1, 0)


def test_cr_and_dr_qualifications():
    assert E.cr_access_qualification(dec("0f22e1")) == 0x104        # mov cr4, rcx
    assert E.cr_access_qualification(dec("0f20d8")) == 0x013        # mov rax, cr3: from CR3, RAX
    assert E.cr_access_qualification(dec("410f22c0")) == 0x800      # mov cr0, r8
    assert E.cr_access_qualification(dec("0f06")) == 0x20           # clts
    assert E.dr_access_qualification(dec("0f23fa")) == 0x207        # mov dr7, rdx
    assert E.dr_access_qualification(dec("0f21c3")) == 0x310        # mov rbx, dr0


def test_io_qualification():
    assert E.io_qualification(0x3F8, 1, False, False, False, False) == 0x03F80000
    assert E.io_qualification(0x60, 1, True, False, False, True) == 0x00600048
