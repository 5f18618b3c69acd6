"""A VMCS that passes every VM-entry check on a profile: `vmxlab template`.

Modes:
  long               the blue-pill state of a small 64-bit kernel (the default): host
                     state = guest state, a flat 64-bit GDT with a TSS, paging on;
  compat             the same kernel's GDT with a 32-bit code segment, IA-32e mode
                     guest in compatibility mode;
  protected          a 32-bit protected-mode guest with 32-bit paging (IA-32e mode
                     guest 0);
  unrestricted-real  a real-mode guest (CR0.PE = PG = 0) under the "unrestricted
                     guest" control (needs EPT).

Controls: the seed's (hypervisor.seed.SEED_CONTROLS) adjusted through the profile
(caps.adjust), the pin-based value included (the seed's unadjusted 0 is its bug);
EPT pointer and VPID are set when the profile keeps "enable EPT" / "enable VPID".
CR0/CR4 are adjusted through the fixed-bit MSRs.
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import registers as R
from ..arch import msrs as M
from ..caps import adjust, adjust_cr
from ..caps.profile import Profile
from ..errors import BadInput
from ..hypervisor.seed import SEED_CONTROLS
from ..vmcs.document import VmcsDocument
from ..vmcs.store import Vmcs
from .facts import facts

MODES = ("long", "compat", "protected", "unrestricted-real")

# The kernel's physical layout (identity-mapped low memory).
GDT_BASE, GDT_LIMIT = 0x1000, 0x37          # null, -, code64, data, code32, TSS (16 bytes)
IDT_BASE, IDT_LIMIT = 0x2000, 0xFFF
TSS_BASE, TSS_LIMIT = 0x3000, 0x67
PML4 = 0x4000                               # guest/host CR3
EPT_PML4 = 0x10000
MSR_BITMAP = 0x20000
KERNEL_RIP, KERNEL_RSP = 0x100000, 0x9F000
HANDLER_RIP, HANDLER_RSP = 0x101000, 0x8F000
SEL_CODE64, SEL_DATA, SEL_CODE32, SEL_TSS = 0x10, 0x18, 0x20, 0x28

AR_CODE64 = 0xA09B        # code XR accessed, P, L, G
AR_CODE32 = 0xC09B        # code XR accessed, P, D/B, G
AR_DATA = 0xC093          # data RW accessed, P, D/B, G
AR_TSS = 0x008B           # busy 32/64-bit TSS, P
AR_UNUSABLE = 0x10000
AR_REAL_CODE = 0x009B     # code XR accessed, P (real mode under unrestricted guest)
AR_REAL_DATA = 0x0093

PAT_DEFAULT = 0x0007040600070406


def build(profile: Profile, mode: str = "long") -> VmcsDocument:
    if mode not in MODES:
        raise BadInput(f"unknown template mode {mode!r} ({', '.join(MODES)})")
    k = facts(profile)
    ctl = {name: adjust(profile, name, wanted).value for name, wanted in SEED_CONTROLS.items()}
    if mode in ("protected", "unrestricted-real"):
        ctl["VM_ENTRY_CONTROLS"] = adjust(profile, "VM_ENTRY_CONTROLS",
                                          SEED_CONTROLS["VM_ENTRY_CONTROLS"] & ~C.VM_ENTRY_IA32E_MODE).value
    if mode == "unrestricted-real":
        if not profile.can_set("SECONDARY_EXEC_UNRESTRICTED_GUEST") or not profile.can_set("SECONDARY_EXEC_ENABLE_EPT"):
            raise BadInput(f"profile {profile.name} cannot run an unrestricted-real guest: the unrestricted-guest "
                           "and enable-EPT secondary controls are not both allowed to be 1")
        ctl["SECONDARY_VM_EXEC_CONTROL"] = adjust(
            profile, "SECONDARY_VM_EXEC_CONTROL",
            SEED_CONTROLS["SECONDARY_VM_EXEC_CONTROL"] | C.SECONDARY_EXEC_UNRESTRICTED_GUEST).value
    if ctl["SECONDARY_VM_EXEC_CONTROL"] and not profile.can_set("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS"):
        ctl["SECONDARY_VM_EXEC_CONTROL"] = 0
    sec = ctl["SECONDARY_VM_EXEC_CONTROL"] if ctl["CPU_BASED_VM_EXEC_CONTROL"] & C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0

    vmcs = Vmcs()

    def put(name: str, value: int) -> None:
        vmcs[name] = value

    for name, value in ctl.items():
        put(name, value)
    put("EXCEPTION_BITMAP", 0)
    put("CR3_TARGET_COUNT", 0)
    put("MSR_BITMAP", MSR_BITMAP)
    put("VMCS_LINK_POINTER", (1 << 64) - 1)
    if sec & C.SECONDARY_EXEC_ENABLE_EPT:
        mt = 6 if k.ept_wb else 0
        walk = 3 if k.ept_walk4 else 4
        put("EPT_POINTER", EPT_PML4 | walk << 3 | mt)
    if sec & C.SECONDARY_EXEC_ENABLE_VPID:
        put("VIRTUAL_PROCESSOR_ID", 1)

    # Host: the 64-bit kernel the hypervisor runs in.
    cr0 = adjust_cr(profile, "CR0", R.CR0_PE | R.CR0_MP | R.CR0_ET | R.CR0_NE | R.CR0_WP | R.CR0_AM | R.CR0_PG).value
    cr4 = adjust_cr(profile, "CR4", R.CR4_PAE | R.CR4_PGE | R.CR4_VMXE | 0x600).value
    efer = M.EFER_SCE | M.EFER_LME | M.EFER_LMA | M.EFER_NXE
    put("HOST_CR0", cr0)
    put("HOST_CR3", PML4)
    put("HOST_CR4", cr4)
    for seg in ("ES", "SS", "DS", "FS", "GS"):
        put(f"HOST_{seg}_SELECTOR", SEL_DATA)
    put("HOST_CS_SELECTOR", SEL_CODE64)
    put("HOST_TR_SELECTOR", SEL_TSS)
    put("HOST_FS_BASE", 0)
    put("HOST_GS_BASE", 0)
    put("HOST_TR_BASE", TSS_BASE)
    put("HOST_GDTR_BASE", GDT_BASE)
    put("HOST_IDTR_BASE", IDT_BASE)
    put("HOST_IA32_SYSENTER_CS", 0)
    put("HOST_IA32_SYSENTER_ESP", 0)
    put("HOST_IA32_SYSENTER_EIP", 0)
    put("HOST_IA32_EFER", efer)
    put("HOST_IA32_PAT", PAT_DEFAULT)
    put("HOST_RSP", HANDLER_RSP)
    put("HOST_RIP", HANDLER_RIP)

    # Guest.
    put("GUEST_DR7", R.DR7_INIT)
    put("GUEST_RFLAGS", R.RFLAGS_FIXED1)
    put("GUEST_RSP", KERNEL_RSP)
    put("GUEST_RIP", KERNEL_RIP)
    put("GUEST_IA32_PAT", PAT_DEFAULT)
    put("GUEST_IA32_DEBUGCTL", 0)
    put("GUEST_ACTIVITY_STATE", 0)
    put("GUEST_INTERRUPTIBILITY_INFO", 0)
    put("GUEST_PENDING_DBG_EXCEPTIONS", 0)
    put("GUEST_GDTR_BASE", GDT_BASE)
    put("GUEST_GDTR_LIMIT", GDT_LIMIT)
    put("GUEST_IDTR_BASE", IDT_BASE)
    put("GUEST_IDTR_LIMIT", IDT_LIMIT)
    put("GUEST_LDTR_SELECTOR", 0)
    put("GUEST_LDTR_AR_BYTES", AR_UNUSABLE)
    put("GUEST_TR_SELECTOR", SEL_TSS)
    put("GUEST_TR_BASE", TSS_BASE)
    put("GUEST_TR_LIMIT", TSS_LIMIT)
    put("GUEST_TR_AR_BYTES", AR_TSS)

    if mode in ("long", "compat", "protected"):
        g_cr4 = cr4 if mode != "protected" else adjust_cr(profile, "CR4", (R.CR4_PGE | R.CR4_VMXE | 0x600)).value
        put("GUEST_CR0", cr0)
        put("GUEST_CR3", PML4)
        put("GUEST_CR4", g_cr4)
        put("GUEST_IA32_EFER", efer if mode != "protected" else M.EFER_NXE)
        code_sel, code_ar = {"long": (SEL_CODE64, AR_CODE64), "compat": (SEL_CODE32, AR_CODE32),
                             "protected": (SEL_CODE32, AR_CODE32)}[mode]
        _segment(put, "CS", code_sel, 0, 0xFFFFFFFF, code_ar)
        for seg in ("ES", "SS", "DS", "FS", "GS"):
            _segment(put, seg, SEL_DATA, 0, 0xFFFFFFFF, AR_DATA)
    else:  # unrestricted-real
        g_cr0 = adjust_cr(profile, "CR0", R.CR0_ET | R.CR0_NE, unrestricted_guest=True).value
        put("GUEST_CR0", g_cr0)
        put("GUEST_CR3", 0)
        put("GUEST_CR4", adjust_cr(profile, "CR4", R.CR4_VMXE).value)
        put("GUEST_IA32_EFER", 0)
        put("GUEST_RIP", 0x7C00)
        put("GUEST_RSP", 0x7000)
        put("GUEST_GDTR_BASE", 0)
        put("GUEST_GDTR_LIMIT", 0xFFFF)
        put("GUEST_IDTR_BASE", 0)
        put("GUEST_IDTR_LIMIT", 0x3FF)
        _segment(put, "CS", 0, 0, 0xFFFF, AR_REAL_CODE)
        for seg in ("ES", "SS", "DS", "FS", "GS"):
            _segment(put, seg, 0, 0, 0xFFFF, AR_REAL_DATA)
    return VmcsDocument(vmcs, cpu=profile.name, source="json")


def _segment(put, seg: str, selector: int, base: int, limit: int, ar: int) -> None:
    put(f"GUEST_{seg}_SELECTOR", selector)
    put(f"GUEST_{seg}_BASE", base)
    put(f"GUEST_{seg}_LIMIT", limit)
    put(f"GUEST_{seg}_AR_BYTES", ar)
