"""Checks on VMX controls (Intel SDM Vol. 3C "Checks on VMX Controls"): the
VM-execution, VM-exit and VM-entry control fields.  Any failure: VMfailValid 7.

Every rule is one bullet (or sub-bullet) of the SDM's text, in its order.  The
secondary, tertiary and secondary VM-exit controls are read through Entry, which
gives 0 when the activating control is 0 -- "no checks are performed ... the
logical processor operates as if all the ... controls were 0".
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import fields as F
from .registry import CONTROLS, S_ENTRY, S_EXEC, S_EXIT, add
from .words import control_bits

PIN, CPU, SEC, TER = ("PIN_BASED_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL",
                      "SECONDARY_VM_EXEC_CONTROL", "TERTIARY_VM_EXEC_CONTROL")
EXIT, EXIT2, ENTRY = "VM_EXIT_CONTROLS", "SECONDARY_VM_EXIT_CONTROLS", "VM_ENTRY_CONTROLS"
VMFUNC = "VM_FUNCTION_CONTROL"


def _ctl(id, section, fields, fn, **kw):
    add(id, section, CONTROLS, fields, fn, **kw)


def _on(attr: str, bit: int):
    """Guard: the control bit is 1 in the effective control value `attr` of Entry."""
    def guard(v, e):
        return getattr(e, attr) & bit
    return guard


# ---- reserved bits against the capability MSRs (Appendix A.3-A.5, A.11) ---------------
def _allowed_rules(prefix: str, section: str, field: str, attr: str, gate_fields: tuple[str, ...],
                   value_of, appendix: str) -> None:
    must_attr, may_attr, msr_attr = f"{attr}_must1", f"{attr}_may1", f"{attr}_msr"

    def allowed0(v, k, e):
        must1 = getattr(k, must_attr)
        bad = must1 & ~value_of(v, e)
        if bad:
            return (f"{control_bits(field, bad)} must be 1 (allowed-0 settings of "
                    f"{getattr(k, msr_attr)}: {must1:#x}; {appendix})")
        return None

    def allowed1(v, k, e):
        may1 = getattr(k, may_attr)
        bad = value_of(v, e) & ~may1
        if bad:
            return (f"{control_bits(field, bad)} must be 0 (allowed-1 settings of "
                    f"{getattr(k, msr_attr)}: {may1:#x}; {appendix})")
        return None

    _ctl(f"{prefix}.allowed0", section, (field, *gate_fields), _FAST0.get(field, allowed0), field=field)
    _ctl(f"{prefix}.allowed1", section, (field, *gate_fields), _FAST1.get(field, allowed1), field=field)
    _SLOW[prefix] = (allowed0, allowed1)


# Hot-path versions of the reserved-bit rules: the test alone, the wording (above)
# only when it fails.  One pair per control field, values read directly.
_SLOW: dict[str, tuple] = {}


def _pin0(v, k, e):
    return _SLOW["ctrl.pin"][0](v, k, e) if k.pin_must1 & ~v[_P] else None


def _pin1(v, k, e):
    return _SLOW["ctrl.pin"][1](v, k, e) if v[_P] & ~k.pin_may1 else None


def _cpu0(v, k, e):
    return _SLOW["ctrl.primary"][0](v, k, e) if k.cpu_must1 & ~v[_C] else None


def _cpu1(v, k, e):
    return _SLOW["ctrl.primary"][1](v, k, e) if v[_C] & ~k.cpu_may1 else None


def _sec0(v, k, e):
    return _SLOW["ctrl.secondary"][0](v, k, e) if e.cpu & _ACT2 and k.sec_must1 & ~e.sec else None


def _sec1(v, k, e):
    return _SLOW["ctrl.secondary"][1](v, k, e) if e.sec & ~k.sec_may1 else None


def _exit0(v, k, e):
    return _SLOW["ctrl.exit"][0](v, k, e) if k.exit_must1 & ~v[_X] else None


def _exit1(v, k, e):
    return _SLOW["ctrl.exit"][1](v, k, e) if v[_X] & ~k.exit_may1 else None


def _entry0(v, k, e):
    return _SLOW["ctrl.entry"][0](v, k, e) if k.entry_must1 & ~v[_N] else None


def _entry1(v, k, e):
    return _SLOW["ctrl.entry"][1](v, k, e) if v[_N] & ~k.entry_may1 else None


_FAST0 = {PIN: _pin0, CPU: _cpu0, SEC: _sec0, EXIT: _exit0, ENTRY: _entry0}
_FAST1 = {PIN: _pin1, CPU: _cpu1, SEC: _sec1, EXIT: _exit1, ENTRY: _entry1}


_ENC = {n: F.by_name(n).encoding for n in (PIN, CPU, SEC, TER, EXIT, EXIT2, ENTRY, VMFUNC)}
_P, _C, _S, _T = _ENC[PIN], _ENC[CPU], _ENC[SEC], _ENC[TER]
_X, _X2, _N, _VF = _ENC[EXIT], _ENC[EXIT2], _ENC[ENTRY], _ENC[VMFUNC]

_allowed_rules("ctrl.pin", S_EXEC, PIN, "pin", (), lambda v, e: v[_P], "Appendix A.3.1")
_allowed_rules("ctrl.primary", S_EXEC, CPU, "cpu", (), lambda v, e: v[_C], "Appendix A.3.2")
_ACT2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
_allowed_rules("ctrl.secondary", S_EXEC, SEC, "sec", (CPU,), lambda v, e: e.sec, "Appendix A.3.3")


def _tertiary(v, k, e):
    bad = e.ter & ~k.ter_may1
    if bad:
        return f"{control_bits(TER, bad)} must be 0 (reserved: allowed-1 settings of {k.ter_msr}: {k.ter_may1:#x}; Appendix A.3.4)"
    return None


_ctl("ctrl.tertiary.reserved", S_EXEC, (TER, CPU), _tertiary, guard=lambda v, e: e.ter)

_CR3_COUNT = F.CR3_TARGET_COUNT


def _cr3_count(v, k, e):
    n = v[_CR3_COUNT]
    if n > k.cr3_target_max:
        return f"the CR3-target count must not be greater than {k.cr3_target_max} (IA32_VMX_MISC bits 24:16)"
    return None


_ctl("ctrl.cr3_target_count", S_EXEC, ("CR3_TARGET_COUNT",), _cr3_count,
     note="The SDM says 'not greater than 4' and that software should read the number from "
          "IA32_VMX_MISC; the profile's IA32_VMX_MISC value is used (4 on every Intel processor).")


# ---- physical addresses of structures the VMCS references -------------------------------
def address_rules(prefix: str, section: str, klass: str, field: str, gate_fields: tuple[str, ...],
                  active, what: str, align_bits: int = 12, aligned_text: str | None = None, guard=None) -> None:
    """Two rules for an address used when `active(v, e)`: bits align_bits-1:0 are 0,
    and no bit is set beyond the physical-address width."""
    enc = F.by_name(field).encoding
    low = (1 << align_bits) - 1
    aligned_text = aligned_text or f"bits {align_bits - 1}:0 of the {what} must be 0"

    def aligned(v, k, e):
        if active(v, e) and v[enc] & low:
            return aligned_text
        return None

    def width(v, k, e):
        if active(v, e) and v[enc] & k.beyond_phys:
            return (f"the {what} must not set bits beyond the physical-address width "
                    f"({k.addr_width} bits: bits 63:{k.addr_width} must be 0)")
        return None

    add(f"{prefix}.aligned", section, klass, (field, *gate_fields), aligned, field=field, guard=guard)
    add(f"{prefix}.width", section, klass, (field, *gate_fields), width, field=field, guard=guard)


_IO = C.CPU_BASED_USE_IO_BITMAPS
_io_on = _on("cpu", _IO)
address_rules("ctrl.io_bitmap_a", S_EXEC, CONTROLS, "IO_BITMAP_A", (CPU,), _io_on, "I/O-bitmap A address", guard=_io_on)
address_rules("ctrl.io_bitmap_b", S_EXEC, CONTROLS, "IO_BITMAP_B", (CPU,), _io_on, "I/O-bitmap B address", guard=_io_on)
_MSRB = C.CPU_BASED_USE_MSR_BITMAPS
_msrb_on = _on("cpu", _MSRB)
address_rules("ctrl.msr_bitmap", S_EXEC, CONTROLS, "MSR_BITMAP", (CPU,), _msrb_on, "MSR-bitmap address", guard=_msrb_on)
_TPR = C.CPU_BASED_TPR_SHADOW
_tpr_on = _on("cpu", _TPR)
address_rules("ctrl.virtual_apic", S_EXEC, CONTROLS, "VIRTUAL_APIC_PAGE_ADDR", (CPU,), _tpr_on,
              "virtual-APIC address", guard=_tpr_on)

_VID, _VAPIC = C.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY, C.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES
_TPR_THRESHOLD, _VAPIC_ADDR = F.TPR_THRESHOLD, F.VIRTUAL_APIC_PAGE_ADDR


def _tpr_threshold(v, k, e):
    if e.cpu & _TPR and not e.sec & _VID and v[_TPR_THRESHOLD] & 0xFFFFFFF0:
        return "with use TPR shadow = 1 and virtual-interrupt delivery = 0, bits 31:4 of the TPR threshold must be 0"
    return None


_ctl("ctrl.tpr_threshold.reserved", S_EXEC, ("TPR_THRESHOLD", CPU, SEC), _tpr_threshold, guard=_tpr_on)


def _tpr_vtpr(v, k, e):
    if e.cpu & _TPR and not e.sec & (_VID | _VAPIC):
        threshold = v[_TPR_THRESHOLD] & 0xF
        vtpr = e.read(v[_VAPIC_ADDR] + 0x80, 1)[0]
        if threshold > vtpr >> 4:
            return (f"TPR threshold bits 3:0 ({threshold}) must not be greater than VTPR bits 7:4 "
                    f"({vtpr >> 4}; VTPR = {vtpr:#x} at virtual-APIC address + 80H)")
    return None


_ctl("ctrl.tpr_threshold.vtpr", S_EXEC, ("TPR_THRESHOLD", "VIRTUAL_APIC_PAGE_ADDR", CPU, SEC), _tpr_vtpr, memory=True,
     guard=_tpr_on)

_NMI_EXIT, _VNMI, _NMI_WINDOW = C.PIN_BASED_NMI_EXITING, C.PIN_BASED_VIRTUAL_NMIS, C.CPU_BASED_NMI_WINDOW_EXITING


def _vnmi(v, k, e):
    if not e.pin & _NMI_EXIT and e.pin & _VNMI:
        return "virtual NMIs (bit 5) must be 0 when NMI exiting (bit 3) is 0"
    return None


def _nmi_window(v, k, e):
    if not e.pin & _VNMI and e.cpu & _NMI_WINDOW:
        return ("CPU_BASED_VM_EXEC_CONTROL", e.cpu, "NMI-window exiting (bit 22) must be 0 when virtual NMIs is 0")
    return None


def _nmi_controls(v, e):
    return e.pin & _VNMI or e.cpu & _NMI_WINDOW


_ctl("ctrl.pin.virtual_nmis", S_EXEC, (PIN,), _vnmi, guard=_nmi_controls)
_ctl("ctrl.primary.nmi_window", S_EXEC, (CPU, PIN), _nmi_window, guard=_nmi_controls)

_vapic_on = _on("sec", _VAPIC)
address_rules("ctrl.apic_access", S_EXEC, CONTROLS, "APIC_ACCESS_ADDR", (CPU, SEC), _vapic_on,
              "APIC-access address", guard=_vapic_on)

_X2APIC, _APICREG = C.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE, C.SECONDARY_EXEC_APIC_REGISTER_VIRT


def _tpr_needed(v, k, e):
    if not e.cpu & _TPR:
        bad = e.sec & (_X2APIC | _APICREG | _VID)
        if bad:
            return ("SECONDARY_VM_EXEC_CONTROL", e.sec,
                    f"{control_bits(SEC, bad)} must be 0 when use TPR shadow is 0")
    return None


def _x2apic(v, k, e):
    if e.sec & _X2APIC and e.sec & _VAPIC:
        return "virtualize APIC accesses (bit 0) must be 0 when virtualize x2APIC mode (bit 4) is 1"
    return None


_EXT_INTR = C.PIN_BASED_EXT_INTR_MASK


def _vid_ext(v, k, e):
    if e.sec & _VID and not e.pin & _EXT_INTR:
        return ("PIN_BASED_VM_EXEC_CONTROL", e.pin,
                "external-interrupt exiting (bit 0) must be 1 when virtual-interrupt delivery is 1")
    return None


def _apic_virt(v, e):
    return e.sec & (_X2APIC | _APICREG | _VID)


_ctl("ctrl.secondary.apic_virt_needs_tpr_shadow", S_EXEC, (SEC, CPU), _tpr_needed, field=SEC, guard=_apic_virt)
_ctl("ctrl.secondary.x2apic_and_apic_accesses", S_EXEC, (SEC, CPU), _x2apic, field=SEC, guard=_apic_virt)
_ctl("ctrl.pin.vid_needs_ext_intr_exiting", S_EXEC, (PIN, SEC, CPU), _vid_ext, field=PIN, guard=_apic_virt)

_PI, _ACK = C.PIN_BASED_POSTED_INTR, C.VM_EXIT_ACK_INTR_ON_EXIT
_PI_NV = F.POSTED_INTR_NV


def _pi_vid(v, k, e):
    if e.pin & _PI and not e.sec & _VID:
        return ("SECONDARY_VM_EXEC_CONTROL", e.sec, "virtual-interrupt delivery must be 1 when process posted interrupts is 1")
    return None


def _pi_ack(v, k, e):
    if e.pin & _PI and not e.exit & _ACK:
        return ("VM_EXIT_CONTROLS", e.exit, "acknowledge interrupt on exit (bit 15) must be 1 when process posted interrupts is 1")
    return None


def _pi_vector(v, k, e):
    if e.pin & _PI and v[_PI_NV] & 0xFF00:
        return "the posted-interrupt notification vector must be in the range 0-255 (bits 15:8 are 0)"
    return None


_pi_on = _on("pin", _PI)
_ctl("ctrl.posted_intr.vid", S_EXEC, (PIN, SEC, CPU), _pi_vid, field=SEC, guard=_pi_on)
_ctl("ctrl.posted_intr.ack_intr_on_exit", S_EXEC, (PIN, EXIT), _pi_ack, field=EXIT, guard=_pi_on)
_ctl("ctrl.posted_intr.vector", S_EXEC, ("POSTED_INTR_NV", PIN), _pi_vector, guard=_pi_on)
address_rules("ctrl.posted_intr_desc", S_EXEC, CONTROLS, "POSTED_INTR_DESC_ADDR", (PIN,), _pi_on,
              "posted-interrupt descriptor address", align_bits=6, guard=_pi_on)

_VPID_ON, _VPID = C.SECONDARY_EXEC_ENABLE_VPID, F.VIRTUAL_PROCESSOR_ID


def _vpid(v, k, e):
    if e.sec & _VPID_ON and v[_VPID] == 0:
        return "the VPID must not be 0000H when enable VPID is 1"
    return None


_ctl("ctrl.vpid.nonzero", S_EXEC, ("VIRTUAL_PROCESSOR_ID", SEC, CPU), _vpid)

# ---- EPTP ("Extended-Page-Table Pointer (EPTP)"; Appendix A.10) ---------------------------
_EPT, _EPTP = C.SECONDARY_EXEC_ENABLE_EPT, F.EPT_POINTER


def _eptp_type(v, k, e):
    if e.sec & _EPT:
        mt = v[_EPTP] & 7
        if not ((mt == 0 and k.ept_uc) or (mt == 6 and k.ept_wb)):
            ok = [n for n, has in (("0 (UC)", k.ept_uc), ("6 (WB)", k.ept_wb)) if has]
            return (f"EPT memory type (bits 2:0) {mt} is not supported; IA32_VMX_EPT_VPID_CAP allows "
                    f"{' or '.join(ok) or 'none'}")
    return None


def _eptp_walk(v, k, e):
    if e.sec & _EPT:
        w = v[_EPTP] >> 3 & 7
        if not ((w == 3 and k.ept_walk4) or (w == 4 and k.ept_walk5)):
            ok = [n for n, has in (("3 (4 levels)", k.ept_walk4), ("4 (5 levels)", k.ept_walk5)) if has]
            return (f"bits 5:3 (page-walk length - 1) = {w} is not supported; IA32_VMX_EPT_VPID_CAP allows "
                    f"{' or '.join(ok) or 'none'}")
    return None


def _eptp_ad(v, k, e):
    if e.sec & _EPT and v[_EPTP] & 0x40 and not k.ept_ad:
        return "bit 6 (accessed and dirty flags) must be 0: IA32_VMX_EPT_VPID_CAP bit 21 is 0"
    return None


def _eptp_sss(v, k, e):
    if e.sec & _EPT and v[_EPTP] & 0x80 and not k.ept_sss:
        return "bit 7 (supervisor shadow-stack control) must be 0: IA32_VMX_EPT_VPID_CAP bit 23 is 0"
    return None


def _eptp_reserved(v, k, e):
    if e.sec & _EPT:
        bad = v[_EPTP] & (0xF00 | k.beyond_maxphy)
        if bad:
            return f"reserved bits 11:8 and 63:{k.maxphyaddr} must be 0 (set: {bad:#x})"
    return None


_EPTP_FIELDS = ("EPT_POINTER", SEC, CPU)
_ept_on = _on("sec", _EPT)
_ctl("ctrl.eptp.memory_type", S_EXEC, _EPTP_FIELDS, _eptp_type, guard=_ept_on)
_ctl("ctrl.eptp.walk_length", S_EXEC, _EPTP_FIELDS, _eptp_walk, guard=_ept_on)
_ctl("ctrl.eptp.accessed_dirty", S_EXEC, _EPTP_FIELDS, _eptp_ad, guard=_ept_on)
_ctl("ctrl.eptp.supervisor_shadow_stack", S_EXEC, _EPTP_FIELDS, _eptp_sss, guard=_ept_on,
     note="Earlier SDM revisions count bit 7 among the reserved bits 11:7; with IA32_VMX_EPT_VPID_CAP bit 23 = 0 "
          "both readings require it to be 0.")
_ctl("ctrl.eptp.reserved", S_EXEC, _EPTP_FIELDS, _eptp_reserved, guard=_ept_on)


# ---- controls that need EPT, and their addresses ----------------------------------------
def _needs_ept(bit: int, what: str, field_name: str = SEC, value_attr: str = "sec"):
    def fn(v, k, e):
        if getattr(e, value_attr) & bit and not e.sec & _EPT:
            return (SEC, e.sec, f"enable EPT (bit 1) must be 1 when {what} is 1")
        return None
    return fn


_PML = C.SECONDARY_EXEC_ENABLE_PML
_pml_on = _on("sec", _PML)
_ctl("ctrl.pml.needs_ept", S_EXEC, (SEC, CPU), _needs_ept(_PML, "enable PML"), field=SEC, guard=_pml_on)
address_rules("ctrl.pml", S_EXEC, CONTROLS, "PML_ADDRESS", (SEC, CPU), _pml_on, "PML address", guard=_pml_on)
_ug_mbec_on = _on("sec", C.SECONDARY_EXEC_UNRESTRICTED_GUEST | C.SECONDARY_EXEC_MODE_BASED_EPT_EXEC)
_ctl("ctrl.unrestricted_guest.needs_ept", S_EXEC, (SEC, CPU),
     _needs_ept(C.SECONDARY_EXEC_UNRESTRICTED_GUEST, "unrestricted guest"), field=SEC, guard=_ug_mbec_on)
_ctl("ctrl.mode_based_ept.needs_ept", S_EXEC, (SEC, CPU),
     _needs_ept(C.SECONDARY_EXEC_MODE_BASED_EPT_EXEC, "mode-based execute control for EPT"), field=SEC,
     guard=_ug_mbec_on)
_SPP = C.SECONDARY_EXEC_ENABLE_SPP
_spp_on = _on("sec", _SPP)
_ctl("ctrl.spp.needs_ept", S_EXEC, (SEC, CPU), _needs_ept(_SPP, "sub-page write permissions for EPT"), field=SEC,
     guard=_spp_on)
address_rules("ctrl.spptp", S_EXEC, CONTROLS, "SPP_TABLE_POINTER", (SEC, CPU), _spp_on,
              "sub-page-permission-table pointer (SPPTP)", guard=_spp_on)

_HLAT = C.TERTIARY_EXEC_ENABLE_HLAT


def _ter_on(v, e):
    return e.ter


_ctl("ctrl.hlat.needs_ept", S_EXEC, (TER, SEC, CPU), _needs_ept(_HLAT, "enable HLAT", value_attr="ter"), field=SEC,
     guard=_ter_on)
_HLATP = F.HLAT_POINTER


def _hlatp_reserved(v, k, e):
    if e.ter & _HLAT:
        bad = v[_HLATP] & (0x7 | 0xFE0 | k.beyond_maxphy)
        if bad:
            return f"bits 2:0, 11:5 and 63:{k.maxphyaddr} of the HLAT pointer must be 0 (set: {bad:#x})"
    return None


_ctl("ctrl.hlatp.reserved", S_EXEC, ("HLAT_POINTER", TER, CPU), _hlatp_reserved, guard=_ter_on,
     note="Written from the SDM's description of the HLATP format (bits 3 and 4 are PWT and PCD); "
          "no profile shipped supports HLAT.")
_ctl("ctrl.ept_paging_write.needs_ept", S_EXEC, (TER, SEC, CPU),
     _needs_ept(C.TERTIARY_EXEC_EPT_PAGING_WRITE, "EPT paging-write control", value_attr="ter"), field=SEC,
     guard=_ter_on)
_ctl("ctrl.guest_paging_verify.needs_ept", S_EXEC, (TER, SEC, CPU),
     _needs_ept(C.TERTIARY_EXEC_GUEST_PAGING_VERIFY, "guest-paging verification", value_attr="ter"), field=SEC,
     guard=_ter_on)

# ---- VM functions ------------------------------------------------------------------------
_VMFUNC_ON, _EPTP_SWITCH = C.SECONDARY_EXEC_ENABLE_VMFUNC, C.VMX_VMFUNC_EPTP_SWITCHING


def _vmfunc_reserved(v, k, e):
    if e.sec & _VMFUNC_ON:
        bad = v[_VF] & ~k.vmfunc_may1
        if bad:
            return f"{control_bits(VMFUNC, bad)} must be 0 (reserved: allowed-1 settings of {k.vmfunc_msr}: {k.vmfunc_may1:#x}; Appendix A.11)"
    return None


def _eptp_switching(v, k, e):
    if e.sec & _VMFUNC_ON and v[_VF] & _EPTP_SWITCH and not e.sec & _EPT:
        return (SEC, e.sec, "enable EPT (bit 1) must be 1 when the EPTP-switching VM function is 1")
    return None


_vmfunc_on = _on("sec", _VMFUNC_ON)
_ctl("ctrl.vmfunc.reserved", S_EXEC, (VMFUNC, SEC, CPU), _vmfunc_reserved, guard=_vmfunc_on)
_ctl("ctrl.vmfunc.eptp_switching_needs_ept", S_EXEC, (VMFUNC, SEC, CPU), _eptp_switching, field=SEC, guard=_vmfunc_on)
address_rules("ctrl.eptp_list", S_EXEC, CONTROLS, "EPTP_LIST_ADDRESS", (VMFUNC, SEC, CPU),
              lambda v, e: e.sec & _VMFUNC_ON and v[_VF] & _EPTP_SWITCH, "EPTP-list address", guard=_vmfunc_on)

_SHADOW = C.SECONDARY_EXEC_SHADOW_VMCS
_shadow_on = _on("sec", _SHADOW)
address_rules("ctrl.vmread_bitmap", S_EXEC, CONTROLS, "VMREAD_BITMAP", (SEC, CPU), _shadow_on,
              "VMREAD-bitmap address", guard=_shadow_on)
address_rules("ctrl.vmwrite_bitmap", S_EXEC, CONTROLS, "VMWRITE_BITMAP", (SEC, CPU), _shadow_on,
              "VMWRITE-bitmap address", guard=_shadow_on)
_VE = C.SECONDARY_EXEC_EPT_VIOLATION_VE
_ve_on = _on("sec", _VE)
address_rules("ctrl.ve_info", S_EXEC, CONTROLS, "VE_INFORMATION_ADDRESS", (SEC, CPU), _ve_on,
              "virtualization-exception information address", guard=_ve_on)

_PT_GPA = C.SECONDARY_EXEC_PT_USE_GPA
_LOAD_RTIT, _CLEAR_RTIT = C.VM_ENTRY_LOAD_IA32_RTIT_CTL, C.VM_EXIT_CLEAR_IA32_RTIT_CTL


def _pt_gpa(v, k, e):
    if e.sec & _PT_GPA:
        missing = []
        if not e.sec & _EPT:
            missing.append("enable EPT (VM-execution)")
        if not e.entry & _LOAD_RTIT:
            missing.append("load IA32_RTIT_CTL (VM-entry)")
        if not e.exit & _CLEAR_RTIT:
            missing.append("clear IA32_RTIT_CTL (VM-exit)")
        if missing:
            return (SEC, e.sec, f"with Intel PT uses guest physical addresses = 1 these controls must be 1: {', '.join(missing)}")
    return None


_ctl("ctrl.pt_guest_physical.controls", S_EXEC, (SEC, CPU, ENTRY, EXIT), _pt_gpa, field=SEC)

# ---- VM-exit control fields ---------------------------------------------------------------
_allowed_rules("ctrl.exit", S_EXIT, EXIT, "exit", (), lambda v, e: v[_X], "Appendix A.4.1")


def _exit2(v, k, e):
    bad = e.exit2 & ~k.exit2_may1
    if bad:
        return f"{control_bits(EXIT2, bad)} must be 0 (reserved: allowed-1 settings of {k.exit2_msr}: {k.exit2_may1:#x}; Appendix A.4.2)"
    return None


_ctl("ctrl.exit2.reserved", S_EXIT, (EXIT2, EXIT), _exit2)

_TIMER, _SAVE_TIMER = C.PIN_BASED_VMX_PREEMPTION_TIMER, C.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER


def _save_timer(v, k, e):
    if not e.pin & _TIMER and e.exit & _SAVE_TIMER:
        return "save VMX-preemption timer value (bit 22) must be 0 when activate VMX-preemption timer is 0"
    return None


_ctl("ctrl.exit.save_preemption_timer", S_EXIT, (EXIT, PIN), _save_timer)


def msr_area_rules(prefix: str, section: str, addr_field: str, count_field: str, what: str) -> None:
    """The three checks on an MSR area used when its count is non-zero."""
    a, n = F.by_name(addr_field).encoding, F.by_name(count_field).encoding

    def aligned(v, k, e):
        if v[n] and v[a] & 0xF:
            return f"the lower 4 bits of the {what} address must be 0 (count {v[n]})"
        return None

    def width(v, k, e):
        if v[n] and v[a] & k.beyond_phys:
            return f"the {what} address must not set bits beyond the physical-address width ({k.addr_width} bits)"
        return None

    def last(v, k, e):
        count = v[n]
        if count:
            end = v[a] + count * 16 - 1
            if end & k.beyond_phys or end >> 64:
                return (f"the last byte of the {what} area ({v[a]:#x} + {count} * 16 - 1 = {end:#x}) must not set "
                        f"bits beyond the physical-address width ({k.addr_width} bits)")
        return None

    def guard(v, e):
        return v[n]

    _ctl(f"{prefix}.aligned", section, (addr_field, count_field), aligned, guard=guard)
    _ctl(f"{prefix}.width", section, (addr_field, count_field), width, guard=guard)
    _ctl(f"{prefix}.last_byte", section, (addr_field, count_field), last, guard=guard)


msr_area_rules("ctrl.exit_msr_store", S_EXIT, "VM_EXIT_MSR_STORE_ADDR", "VM_EXIT_MSR_STORE_COUNT", "VM-exit MSR-store")
msr_area_rules("ctrl.exit_msr_load", S_EXIT, "VM_EXIT_MSR_LOAD_ADDR", "VM_EXIT_MSR_LOAD_COUNT", "VM-exit MSR-load")

# ---- VM-entry control fields --------------------------------------------------------------
_allowed_rules("ctrl.entry", S_ENTRY, ENTRY, "entry", (), lambda v, e: v[_N], "Appendix A.5")

_INFO, _ERRCODE, _ILEN, _CR0 = (F.VM_ENTRY_INTR_INFO_FIELD, F.VM_ENTRY_EXCEPTION_ERROR_CODE,
                                F.VM_ENTRY_INSTRUCTION_LEN, F.GUEST_CR0)
INFO = "VM_ENTRY_INTR_INFO_FIELD"
_VALID = 1 << 31


def _ev_type(v, k, e):
    info = v[_INFO]
    if info & _VALID:
        t = info >> 8 & 7
        if t == 1:
            return "interruption type (bits 10:8) 1 is reserved"
        if t == 7 and not k.mtf:
            return "interruption type 7 (other event) is reserved on a processor without the monitor trap flag control"
    return None


def _ev_vector(v, k, e):
    info = v[_INFO]
    if info & _VALID:
        t, vec = info >> 8 & 7, info & 0xFF
        if t == 2 and vec != 2:
            return f"an NMI (type 2) must have vector 2, not {vec}"
        if t == 3 and vec > 31:
            return f"a hardware exception (type 3) must have a vector of at most 31, not {vec}"
        if t == 7 and vec != 0:
            return f"an other event (type 7) must have vector 0 (pending MTF VM exit), not {vec}"
    return None


def _ev_errcode_bit(v, k, e):
    info = v[_INFO]
    if info & _VALID:
        t, vec, deliver = info >> 8 & 7, info & 0xFF, info >> 11 & 1
        # protected mode: "unrestricted guest" is 0 or the guest CR0 field has PE = 1
        prot = not e.ug or v[_CR0] & 1
        if deliver and (t != 3 or not prot):
            why = ("the interruption type is not hardware exception" if t != 3 else
                   "the guest will be in real mode (unrestricted guest 1, CR0.PE 0)")
            return f"deliver-error-code (bit 11) must be 0: {why}"
        if t == 3 and prot and not k.no_hw_errcode_check:
            should = vec in k.errcode_vectors
            if deliver != should:
                return (f"deliver-error-code (bit 11) must be {int(should)} for a hardware exception with vector {vec} "
                        f"in protected mode (IA32_VMX_BASIC bit 56 is 0)")
    return None


def _ev_reserved(v, k, e):
    info = v[_INFO]
    if info & _VALID and info & 0x7FFFF000:
        return "reserved bits 30:12 must be 0"
    return None


def _ev_errcode_value(v, k, e):
    info = v[_INFO]
    if info & _VALID and info & 0x800 and v[_ERRCODE] & 0xFFFF0000:
        return ("VM_ENTRY_EXCEPTION_ERROR_CODE", v[_ERRCODE],
                "bits 31:16 of the VM-entry exception error code must be 0 when deliver-error-code is 1")
    return None


def _ev_length(v, k, e):
    info = v[_INFO]
    if info & _VALID and info >> 8 & 7 in (4, 5, 6):
        n = v[_ILEN]
        if n > 15 or (n == 0 and not k.zero_len_injection):
            allowed = "0-15" if k.zero_len_injection else "1-15 (IA32_VMX_MISC bit 30 is 0)"
            return ("VM_ENTRY_INSTRUCTION_LEN", n,
                    f"a software interrupt or exception needs a VM-entry instruction length in the range {allowed}")
    return None


def _ev_valid(v, e):
    return v[_INFO] & _VALID


_ctl("ctrl.event.type", S_ENTRY, (INFO,), _ev_type, guard=_ev_valid)
_ctl("ctrl.event.vector", S_ENTRY, (INFO,), _ev_vector, guard=_ev_valid)
_ctl("ctrl.event.deliver_error_code", S_ENTRY, (INFO, "GUEST_CR0", SEC, CPU), _ev_errcode_bit, guard=_ev_valid,
     note="Deliver-error-code is 1 exactly for a hardware exception that pushes an error code (#DF #TS #NP #SS #GP "
          "#PF #AC; #CP on processors with CET) when the guest is in protected mode (unrestricted guest 0 or CR0.PE "
          "1); with IA32_VMX_BASIC[56] = 1 it may be 0 or 1 for such an exception in protected mode.")
_ctl("ctrl.event.reserved", S_ENTRY, (INFO,), _ev_reserved, guard=_ev_valid)
_ctl("ctrl.event.error_code", S_ENTRY, (INFO, "VM_ENTRY_EXCEPTION_ERROR_CODE"), _ev_errcode_value, guard=_ev_valid,
     field="VM_ENTRY_EXCEPTION_ERROR_CODE",
     note="Bits 31:16 as in current SDM revisions (earlier ones said 31:15; bit 15 is the #PF SGX bit).")
_ctl("ctrl.event.instruction_length", S_ENTRY, (INFO, "VM_ENTRY_INSTRUCTION_LEN"), _ev_length, guard=_ev_valid,
     field="VM_ENTRY_INSTRUCTION_LEN")

msr_area_rules("ctrl.entry_msr_load", S_ENTRY, "VM_ENTRY_MSR_LOAD_ADDR", "VM_ENTRY_MSR_LOAD_COUNT", "VM-entry MSR-load")

_SMM, _DUAL = C.VM_ENTRY_SMM, C.VM_ENTRY_DEACT_DUAL_MONITOR


def _smm(v, k, e):
    bad = e.entry & (_SMM | _DUAL)
    if bad:
        return f"{control_bits(ENTRY, bad)} must be 0: the processor is not in SMM"
    return None


def _smm_dual(v, k, e):
    if e.entry & _SMM and e.entry & _DUAL:
        return "entry to SMM (bit 10) and deactivate dual-monitor treatment (bit 11) cannot both be 1"
    return None


def _smm_controls(v, e):
    return e.entry & (_SMM | _DUAL)


_ctl("ctrl.entry.smm_outside_smm", S_ENTRY, (ENTRY,), _smm, guard=_smm_controls,
     note="vmxlab models a processor outside SMM; VM entries from SMM (dual-monitor treatment) are not modelled.")
_ctl("ctrl.entry.smm_and_dual_monitor", S_ENTRY, (ENTRY,), _smm_dual, guard=_smm_controls)
