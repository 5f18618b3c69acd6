"""The VMX instructions in VMX root operation, with the SDM's operation.

Source: Intel SDM Vol. 3C "VMX Instruction Reference" (VMXON, VMXOFF, VMCLEAR,
VMPTRLD, VMPTRST, VMREAD, VMWRITE, VMLAUNCH/VMRESUME, INVEPT, INVVPID, VMCALL):
the "Operation" pseudo-code of each, and "Conventions" for VMsucceed,
VMfailInvalid and VMfailValid(n).

This module is the VMX state machine (VMX operation, VMXON pointer, current-VMCS
pointer, VMCS regions and their launch state) and the outcome of each instruction.
It does not touch the processor: the caller passes the processor context the
instruction depends on (Context) and applies the Outcome (RFLAGS, an exception, a
value to store, a VM entry to perform).  The Python API and the #UD-hook path of
machine code both call these methods: one implementation, two callers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from ..arch import msrs as M
from ..arch.instruction_errors import (
    VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID, VMXERR_VMCALL_IN_VMX_ROOT_OPERATION,
    VMXERR_VMCLEAR_INVALID_ADDRESS, VMXERR_VMCLEAR_VMXON_POINTER, VMXERR_VMPTRLD_INCORRECT_VMCS_REVISION_ID,
    VMXERR_VMPTRLD_INVALID_ADDRESS, VMXERR_VMPTRLD_VMXON_POINTER, VMXERR_VMXON_IN_VMX_ROOT_OPERATION)
from ..arch.registers import CR0_PE, CR4_VMXE, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF, canonical
from ..checks.eptp import eptp_problems
from ..vmcs import Vmcs, region
from ..vmcs.access import VmInstructionError, vmread, vmwrite

INVALID_POINTER = (1 << 64) - 1
_STATUS = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF


@dataclass(frozen=True, slots=True)
class Context:
    """Processor state a VMX instruction's operation reads."""
    cpl: int = 0
    cr0: int = 0x80050033                # PG, AM, WP, NE, ET, MP, PE: a 64-bit kernel
    cr4: int = CR4_VMXE | 0x20           # VMXE, PAE
    efer_lma: bool = True
    cs_l: bool = True
    v8086: bool = False
    feature_control: int = 0x5          # locked, VMX outside SMX
    smx: bool = False
    mov_ss_blocking: bool = False

    @property
    def ud_mode(self) -> bool:
        """#UD for real mode, virtual-8086 mode and compatibility mode."""
        return not self.cr0 & CR0_PE or self.v8086 or (self.efer_lma and not self.cs_l)


@dataclass(slots=True)
class Outcome:
    """What an instruction did.  kind: "succeed", "fail_invalid", "fail_valid",
    "exception" (vector, error_code), "entry" (the caller performs VM entry),
    "exit" (in VMX non-root operation the instruction causes a VM exit)."""
    kind: str
    error: int = 0
    vector: int = 0
    error_code: int | None = None
    value: int | None = None          # VMREAD result, VMPTRST pointer

    def rflags(self, rflags: int) -> int:
        """RFLAGS after the instruction ("Conventions": VMsucceed/VMfailInvalid/VMfailValid)."""
        r = rflags & ~_STATUS
        if self.kind == "fail_invalid":
            r |= RFLAGS_CF
        elif self.kind == "fail_valid":
            r |= RFLAGS_ZF
        return r


SUCCEED = Outcome("succeed")
UD = Outcome("exception", vector=6)
GP0 = Outcome("exception", vector=13, error_code=0)


@dataclass
class VmxState:
    """VMX operation of one logical processor."""
    profile: object
    read_phys: Callable[[int, int], bytes]
    write_phys: Callable[[int, bytes], None]
    in_vmx: bool = False
    non_root: bool = False
    vmxon_pointer: int = INVALID_POINTER
    current: int = INVALID_POINTER               # current-VMCS pointer
    vmcs: dict[int, Vmcs] = field(default_factory=dict)   # VMCSs held by the processor (active)
    on_flush: Callable[[str, int], None] | None = None    # TLB/EPT invalidations (kind, arg)

    # -- conventions -------------------------------------------------------------------
    @property
    def current_vmcs(self) -> Vmcs | None:
        return self.vmcs.get(self.current) if self.current != INVALID_POINTER else None

    def fail(self, error: int) -> Outcome:
        """VMfail(error): VMfailValid with a current VMCS, else VMfailInvalid."""
        cur = self.current_vmcs
        if cur is None:
            return Outcome("fail_invalid")
        cur.values[0x4400] = error               # VM_INSTRUCTION_ERROR
        return Outcome("fail_valid", error=error)

    def _bad_address(self, addr: int) -> bool:
        width = 32 if self.profile.phys_addr_width_32 else self.profile.maxphyaddr
        return addr & 0xFFF != 0 or addr >> width != 0

    def _common(self, ctx: Context) -> Outcome | None:
        """#UD outside VMX operation or in real/v8086/compatibility mode; VM exit in
        non-root operation; #GP(0) at CPL > 0."""
        if not self.in_vmx or ctx.ud_mode:
            return UD
        if self.non_root:
            return Outcome("exit")
        if ctx.cpl > 0:
            return GP0
        return None

    # -- instructions -----------------------------------------------------------------
    def vmxon(self, ctx: Context, addr: int, register_operand: bool = False) -> Outcome:
        p = self.profile
        if register_operand or not ctx.cr0 & CR0_PE or not ctx.cr4 & CR4_VMXE or ctx.v8086 \
                or (ctx.efer_lma and not ctx.cs_l):
            return UD
        if not self.in_vmx:
            fc = ctx.feature_control
            cr_ok = (ctx.cr0 & p.cr0_fixed0 == p.cr0_fixed0 and ctx.cr0 & ~p.cr0_fixed1 == 0
                     and ctx.cr4 & p.cr4_fixed0 == p.cr4_fixed0 and ctx.cr4 & ~p.cr4_fixed1 == 0)
            if ctx.cpl > 0 or not cr_ok or not fc & M.FEATURE_CONTROL_LOCK \
                    or (ctx.smx and not fc & M.FEATURE_CONTROL_VMX_IN_SMX) \
                    or (not ctx.smx and not fc & M.FEATURE_CONTROL_VMX_OUTSIDE_SMX):
                return GP0
            if self._bad_address(addr):
                return Outcome("fail_invalid")
            rev = struct.unpack("<I", self.read_phys(addr, 4))[0]
            if rev & 0x7FFFFFFF != p.revision_id or rev >> 31:
                return Outcome("fail_invalid")
            self.in_vmx, self.non_root = True, False
            self.vmxon_pointer, self.current = addr, INVALID_POINTER
            return SUCCEED
        if self.non_root:
            return Outcome("exit")
        if ctx.cpl > 0:
            return GP0
        return self.fail(VMXERR_VMXON_IN_VMX_ROOT_OPERATION)

    def vmxoff(self, ctx: Context) -> Outcome:
        early = self._common(ctx)
        if early:
            return early
        for ptr in list(self.vmcs):             # VMCS data is written back (SDM: "flush")
            self._write_back(ptr)
        self.in_vmx = False
        self.vmxon_pointer = self.current = INVALID_POINTER
        self.vmcs.clear()
        return SUCCEED

    def _write_back(self, ptr: int) -> None:
        vmcs = self.vmcs.get(ptr)
        if vmcs is not None:
            old = self.read_phys(ptr, 8)
            data = region.pack(vmcs, self.profile, revision=struct.unpack_from("<I", old)[0] & 0x7FFFFFFF,
                               shadow=bool(old[3] >> 7), abort=struct.unpack_from("<I", old, 4)[0])
            self.write_phys(ptr, data)

    def vmclear(self, ctx: Context, addr: int, register_operand: bool = False) -> Outcome:
        if register_operand:
            return UD
        early = self._common(ctx)
        if early:
            return early
        if self._bad_address(addr):
            return self.fail(VMXERR_VMCLEAR_INVALID_ADDRESS)
        if addr == self.vmxon_pointer:
            return self.fail(VMXERR_VMCLEAR_VMXON_POINTER)
        vmcs = self.vmcs.pop(addr, None)
        if vmcs is None:                        # not active: clear the launch state in memory
            data = bytearray(self.read_phys(addr, self.profile.vmcs_size))
            region.set_launch_state(data, "clear")
            self.write_phys(addr, bytes(data))
        else:
            vmcs.launch_state = "clear"
            self.vmcs[addr] = vmcs
            self._write_back(addr)
            del self.vmcs[addr]
        if addr == self.current:
            self.current = INVALID_POINTER
        return SUCCEED

    def vmptrld(self, ctx: Context, addr: int, register_operand: bool = False) -> Outcome:
        if register_operand:
            return UD
        early = self._common(ctx)
        if early:
            return early
        if self._bad_address(addr):
            return self.fail(VMXERR_VMPTRLD_INVALID_ADDRESS)
        if addr == self.vmxon_pointer:
            return self.fail(VMXERR_VMPTRLD_VMXON_POINTER)
        rev = struct.unpack("<I", self.read_phys(addr, 4))[0]
        shadow_ok = self.profile.can_set("SECONDARY_EXEC_SHADOW_VMCS")
        if rev & 0x7FFFFFFF != self.profile.revision_id or (rev >> 31 and not shadow_ok):
            return self.fail(VMXERR_VMPTRLD_INCORRECT_VMCS_REVISION_ID)
        if addr not in self.vmcs:
            self.vmcs[addr] = region.unpack(self.read_phys(addr, self.profile.vmcs_size), self.profile)
        self.current = addr
        return SUCCEED

    def vmptrst(self, ctx: Context, register_operand: bool = False) -> Outcome:
        if register_operand:
            return UD
        early = self._common(ctx)
        if early:
            return early
        return Outcome("succeed", value=self.current)

    def vmread(self, ctx: Context, encoding: int, operand_bits: int = 64) -> Outcome:
        return self._common(ctx) or self._read_field(self.current_vmcs, encoding, operand_bits)

    def vmwrite(self, ctx: Context, encoding: int, value: int, operand_bits: int = 64) -> Outcome:
        return self._common(ctx) or self._write_field(self.current_vmcs, encoding, value, operand_bits)

    # -- VMREAD / VMWRITE in VMX non-root operation with VMCS shadowing ---------------------
    def vmread_shadow(self, ctx: Context, link: int, encoding: int, operand_bits: int = 64) -> Outcome:
        """VMREAD's operation in VMX non-root operation past its VM-exit conditions
        ("VMCS shadowing" 1, the VMREAD-bitmap bit 0): #GP(0) at CPL > 0, VMfailInvalid
        without a valid VMCS link pointer, else the field of the VMCS it references
        (a VMfailValid error goes to the current VMCS)."""
        return (GP0 if ctx.cpl > 0 else None) or self._read_field(self._shadow(link), encoding, operand_bits)

    def vmwrite_shadow(self, ctx: Context, link: int, encoding: int, value: int,
                       operand_bits: int = 64) -> Outcome:
        """VMWRITE's operation in VMX non-root operation past its VM-exit conditions,
        into the VMCS the link pointer references (as vmread_shadow)."""
        return (GP0 if ctx.cpl > 0 else None) or self._write_field(self._shadow(link), encoding, value,
                                                                      operand_bits)

    def _shadow(self, link: int) -> Vmcs | None:
        """The VMCS the link pointer references (made active from its region if it is not)."""
        if link == INVALID_POINTER:
            return None
        vmcs = self.vmcs.get(link)
        if vmcs is None:
            vmcs = self.vmcs[link] = region.unpack(self.read_phys(link, self.profile.vmcs_size), self.profile)
        return vmcs

    def _read_field(self, target: Vmcs | None, encoding: int, operand_bits: int) -> Outcome:
        """VMfailInvalid without a VMCS; the field's value; VMfailValid(12) for no such field."""
        if target is None:
            return Outcome("fail_invalid")
        try:
            return Outcome("succeed", value=vmread(target, encoding, self.profile, operand_bits))
        except VmInstructionError as e:
            return self.fail(e.number)

    def _write_field(self, target: Vmcs | None, encoding: int, value: int, operand_bits: int) -> Outcome:
        """VMfailInvalid without a VMCS; VMfailValid(12/13) for no such / a read-only field."""
        if target is None:
            return Outcome("fail_invalid")
        try:
            vmwrite(target, encoding, value, self.profile, operand_bits)
        except VmInstructionError as e:
            return self.fail(e.number)
        return SUCCEED

    def vmlaunch(self, ctx: Context, resume: bool = False) -> Outcome:
        """The checks before VM entry that are not VMCS checks; "entry" means the
        caller runs the VM-entry checks of checks/ (which also give errors 4, 5, 26)
        and performs the entry."""
        early = self._common(ctx)
        if early:
            return early
        if self.current_vmcs is None:
            return Outcome("fail_invalid")
        return Outcome("entry")

    def invept(self, ctx: Context, itype: int, descriptor: bytes) -> Outcome:
        p = self.profile
        if not p.can_set("SECONDARY_EXEC_ENABLE_EPT") or not p.ept_cap("invept"):
            return UD
        early = self._common(ctx)
        if early:
            return early
        supported = {1: p.ept_cap("invept_single"), 2: p.ept_cap("invept_all")}
        if not supported.get(itype, False):
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        eptp = struct.unpack_from("<Q", descriptor)[0]
        if itype == 1 and eptp_problems(eptp, p):      # the VM-entry EPTP rules, one implementation
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if self.on_flush:
            self.on_flush("invept", eptp if itype == 1 else -1)
        return SUCCEED

    def invvpid(self, ctx: Context, itype: int, descriptor: bytes) -> Outcome:
        p = self.profile
        if not p.can_set("SECONDARY_EXEC_ENABLE_VPID") or not p.ept_cap("invvpid"):
            return UD
        early = self._common(ctx)
        if early:
            return early
        caps = {0: "invvpid_address", 1: "invvpid_single", 2: "invvpid_all", 3: "invvpid_single_keep_global"}
        if itype not in caps or not p.ept_cap(caps[itype]):
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        lo, linear = struct.unpack_from("<QQ", descriptor)
        vpid = lo & 0xFFFF
        if lo >> 16:                               # descriptor bits 63:16 reserved
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if itype in (0, 1, 3) and vpid == 0:
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if itype == 0 and not canonical(linear, p.linear_address_bits):
            return self.fail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if self.on_flush:
            self.on_flush("invvpid", vpid if itype != 2 else -1)
        return SUCCEED

    def vmcall(self, ctx: Context) -> Outcome:
        """VMCALL in VMX root operation (non-root VMCALL always exits)."""
        if not self.in_vmx:
            return UD
        if self.non_root:
            return Outcome("exit")
        if ctx.v8086 or (ctx.efer_lma and not ctx.cs_l):
            return UD
        if ctx.cpl > 0:
            return GP0
        # Activating the dual-monitor treatment of SMIs and SMM needs IA32_SMM_MONITOR_CTL[0]
        # = 1 and an SMM monitor; vmxlab models no SMM, so VMCALL in root fails.
        return self.fail(VMXERR_VMCALL_IN_VMX_ROOT_OPERATION)

