"""Profile-derived constants the rules use, computed once per profile.

Everything here is a plain attribute (int or bool) so that a rule reads it with
one attribute lookup; `facts(profile)` caches the object on the profile.
Sources: Intel SDM Vol. 3D Appendix A (capability MSRs), Vol. 3C "VM Entries"
(which capability each check consults).
"""
from __future__ import annotations

from ..arch import capabilities as CAP
from ..arch import controls as C
from ..arch import msrs as M
from ..caps import msrmodel
from ..caps.profile import Profile

ALL64 = (1 << 64) - 1


class Facts:
    def __init__(self, p: Profile):
        self.profile = p
        self.name = p.name
        a = p.allowed
        self.pin_must1, self.pin_may1, self.pin_msr = a("PIN_BASED_VM_EXEC_CONTROL")
        self.cpu_must1, self.cpu_may1, self.cpu_msr = a("CPU_BASED_VM_EXEC_CONTROL")
        self.sec_must1, self.sec_may1, self.sec_msr = a("SECONDARY_VM_EXEC_CONTROL")
        self.ter_must1, self.ter_may1, self.ter_msr = a("TERTIARY_VM_EXEC_CONTROL")
        self.exit_must1, self.exit_may1, self.exit_msr = a("VM_EXIT_CONTROLS")
        self.exit2_must1, self.exit2_may1, self.exit2_msr = a("SECONDARY_VM_EXIT_CONTROLS")
        self.entry_must1, self.entry_may1, self.entry_msr = a("VM_ENTRY_CONTROLS")
        self.vmfunc_must1, self.vmfunc_may1, self.vmfunc_msr = a("VM_FUNCTION_CONTROL")
        # Physical-address width for the addresses the VMCS references ("should not
        # set any bits beyond the processor's physical-address width"; with
        # IA32_VMX_BASIC[48] = 1 also none in 63:32, Appendix A.1).
        self.maxphyaddr = p.maxphyaddr
        self.addr_width = min(p.maxphyaddr, 32) if p.phys_addr_width_32 else p.maxphyaddr
        self.beyond_phys = ALL64 & ~((1 << self.addr_width) - 1)      # VMCS-referenced structures
        self.beyond_maxphy = ALL64 & ~((1 << p.maxphyaddr) - 1)        # CR3, EPTP, PDPTEs
        self.linear_bits = p.linear_address_bits
        # canonical(x) <=> x >> canon_shift is 0 or canon_ones (bits 63:N-1 all equal)
        self.canon_shift = self.linear_bits - 1
        self.canon_ones = (1 << (65 - self.linear_bits)) - 1
        self.cr0_fixed0, self.cr0_fixed1 = p.cr0_fixed0, p.cr0_fixed1
        self.cr4_fixed0, self.cr4_fixed1 = p.cr4_fixed0, p.cr4_fixed1
        misc = p.misc
        self.misc = misc
        self.activity_ok = {0: True,
                            1: bool(CAP.MISC["activity_hlt"].get(misc)),
                            2: bool(CAP.MISC["activity_shutdown"].get(misc)),
                            3: bool(CAP.MISC["activity_wait_sipi"].get(misc))}
        self.cr3_target_max = CAP.MISC["cr3_target_count"].get(misc)
        self.zero_len_injection = bool(CAP.MISC["zero_length_injection"].get(misc))
        self.no_hw_errcode_check = bool(CAP.BASIC["no_hw_error_code_check"].get(p.basic))
        self.mtf = bool(self.cpu_may1 & C.CPU_BASED_MONITOR_TRAP_FLAG)
        ept = p.ept_vpid_cap
        self.ept_uc = bool(CAP.EPT_VPID_CAP["ept_uc"].get(ept))
        self.ept_wb = bool(CAP.EPT_VPID_CAP["ept_wb"].get(ept))
        self.ept_walk4 = bool(CAP.EPT_VPID_CAP["ept_walk_4"].get(ept))
        self.ept_walk5 = bool(CAP.EPT_VPID_CAP["ept_walk_5"].get(ept))
        self.ept_ad = bool(CAP.EPT_VPID_CAP["ept_ad"].get(ept))
        self.ept_sss = bool(CAP.EPT_VPID_CAP["ept_sss"].get(ept))
        self.revision_id = p.revision_id
        # CPUID-derived
        self.cet = p.has("CET_SS") or p.has("CET_IBT")
        self.rtm = self._cpuid_bit(7, 1, 11)          # CPUID.(EAX=07H,ECX=0):EBX.RTM[bit 11]
        self.sgx = self._cpuid_bit(7, 1, 2)           # CPUID.(EAX=07H,ECX=0):EBX.SGX[bit 2]
        # Vectors whose delivery pushes an error code (#DF #TS #NP #SS #GP #PF #AC,
        # and #CP on processors with CET).
        self.errcode_vectors = frozenset({8, 10, 11, 12, 13, 14, 17} | ({21} if self.cet else set()))
        # Reserved bits of the MSRs whose VMCS fields the checks inspect (msrmodel).
        rm = msrmodel.reserved_mask
        self.debugctl_reserved = rm(p, M.IA32_DEBUGCTL)
        self.perf_global_reserved = rm(p, M.IA32_PERF_GLOBAL_CTRL)
        self.rtit_ctl_reserved = rm(p, M.IA32_RTIT_CTL)
        self.lbr_ctl_reserved = rm(p, M.IA32_LBR_CTL)
        self.s_cet_reserved = ALL64 & ~msrmodel.CET_VALID
        # IA32_EFER: SCE, LME, LMA, NXE as the processor has them (LMA is not written
        # by WRMSR but is a defined bit of the register).
        self.efer_reserved = rm(p, M.IA32_EFER)

    def _cpuid_bit(self, leaf: int, reg: int, bit: int) -> bool:
        regs = self.profile.cpuid_leaf(leaf, 0)
        return bool(regs and regs[reg] >> bit & 1)


_CACHE: dict[int, Facts] = {}


def facts(profile: Profile) -> Facts:
    f = _CACHE.get(id(profile))
    if f is None or f.profile is not profile:
        f = Facts(profile)
        _CACHE[id(profile)] = f
    return f
