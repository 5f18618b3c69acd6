"""Checks on the host-state area and on address-space size (Intel SDM Vol. 3C
"Checks on Host Control Registers, MSRs, and SSP", "Checks on Host
Segment and Descriptor-Table Registers", "Checks Related to Address-Space Size").
Any failure: VMfailValid 8.

The processor is taken to support Intel 64 architecture (every profile does).
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import fields as F
from ..arch import registers as R
from .registry import HOST, S_ADDR_SIZE, S_HOST_CR, S_HOST_SEG, add
from .words import reg_bits

EXIT, ENTRY = "VM_EXIT_CONTROLS", "VM_ENTRY_CONTROLS"


def _host(id, section, fields, fn, **kw):
    add(id, section, HOST, fields, fn, **kw)


def fixed_bits_message(register: str, value: int, fixed0: int, fixed1: int, skip: int = 0) -> str | None:
    """None if value honours FIXED0/FIXED1 (bits in `skip` not checked), else what is wrong."""
    must1 = fixed0 & ~skip & ~value
    must0 = value & ~fixed1 & ~skip & ((1 << 64) - 1)
    if not must1 and not must0:
        return None
    parts = []
    if must1:
        parts.append(f"{reg_bits(register, must1)} must be 1 (IA32_VMX_{register}_FIXED0 = {fixed0:#x})")
    if must0:
        parts.append(f"{reg_bits(register, must0)} must be 0 (IA32_VMX_{register}_FIXED1 = {fixed1:#x})")
    return "; ".join(parts) + ": not supported in VMX operation"


def canonical_rule(id: str, section: str, klass: str, field: str, gate_fields: tuple[str, ...] = (),
                   active=None, what: str = "", guard=None) -> None:
    enc = F.by_name(field).encoding
    what = what or field

    if active is None:
        def fn(v, k, e):
            top = v[enc] >> k.canon_shift
            if top and top != k.canon_ones:
                return f"{what} must be canonical ({k.linear_bits}-bit linear addresses)"
            return None
    else:
        def fn(v, k, e):
            if active(v, e):
                top = v[enc] >> k.canon_shift
                if top and top != k.canon_ones:
                    return f"{what} must be canonical ({k.linear_bits}-bit linear addresses)"
            return None
    add(id, section, klass, (field, *gate_fields), fn, field=field, guard=guard)


_CR0, _CR3, _CR4 = F.HOST_CR0, F.HOST_CR3, F.HOST_CR4


def _cr0(v, k, e):
    x = v[_CR0]
    if k.cr0_fixed0 & ~x or x & ~k.cr0_fixed1:
        return fixed_bits_message("CR0", x, k.cr0_fixed0, k.cr0_fixed1)
    return None


def _cr4(v, k, e):
    x = v[_CR4]
    if k.cr4_fixed0 & ~x or x & ~k.cr4_fixed1:
        return fixed_bits_message("CR4", x, k.cr4_fixed0, k.cr4_fixed1)
    return None


def _cet_wp(v, k, e):
    if v[_CR4] & R.CR4_CET and not v[_CR0] & R.CR0_WP:
        return ("HOST_CR0", v[_CR0], "CR0.WP (bit 16) must be 1 when CR4.CET (bit 23) is 1 in the host CR4 field")
    return None


def _cr3(v, k, e):
    if v[_CR3] & k.beyond_maxphy:
        return f"bits 63:{k.maxphyaddr} must be 0 (beyond the physical-address width)"
    return None


_host("host.cr0.fixed_bits", S_HOST_CR, ("HOST_CR0",), _cr0)
_host("host.cr4.fixed_bits", S_HOST_CR, ("HOST_CR4",), _cr4)
_host("host.cr4.cet_needs_wp", S_HOST_CR, ("HOST_CR4", "HOST_CR0"), _cet_wp, field="HOST_CR0")
_host("host.cr3.width", S_HOST_CR, ("HOST_CR3",), _cr3)
canonical_rule("host.sysenter_esp.canonical", S_HOST_CR, HOST, "HOST_IA32_SYSENTER_ESP")
canonical_rule("host.sysenter_eip.canonical", S_HOST_CR, HOST, "HOST_IA32_SYSENTER_EIP")
_LOAD_CET = C.VM_EXIT_LOAD_CET_STATE
# Guard of the host MSR-field rules: one of the VM-exit controls that load them is 1.
_EXIT_LOADS = (C.VM_EXIT_LOAD_CET_STATE | C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL | C.VM_EXIT_LOAD_IA32_PAT
               | C.VM_EXIT_LOAD_IA32_EFER | C.VM_EXIT_LOAD_IA32_PKRS)


def _exit_loads(v, e):
    return e.exit & _EXIT_LOADS


canonical_rule("host.s_cet.canonical", S_HOST_CR, HOST, "HOST_S_CET", (EXIT,), lambda v, e: e.exit & _LOAD_CET,
               guard=_exit_loads)
canonical_rule("host.intr_ssp_table.canonical", S_HOST_CR, HOST, "HOST_INTR_SSP_TABLE", (EXIT,),
               lambda v, e: e.exit & _LOAD_CET, guard=_exit_loads)
_S_CET, _HSSP = F.HOST_S_CET, F.HOST_SSP


def _s_cet_reserved(v, k, e):
    if e.exit & _LOAD_CET and v[_S_CET] & k.s_cet_reserved:
        return f"reserved bits of IA32_S_CET must be 0 (set: {v[_S_CET] & k.s_cet_reserved:#x})"
    return None


def _ssp_aligned(v, k, e):
    if e.exit & _LOAD_CET and v[_HSSP] & 3:
        return "bits 1:0 of the SSP field must be 0"
    return None


_CET_NOTE = ("No shipped profile supports CET; the SDM's CET checks are written as recalled and as KVM's nested "
             "checks do them (reserved bits 9:6 of IA32_S_CET, SSP 4-byte aligned).")
_host("host.s_cet.reserved", S_HOST_CR, ("HOST_S_CET", EXIT), _s_cet_reserved, note=_CET_NOTE, guard=_exit_loads)
_host("host.ssp.aligned", S_HOST_CR, ("HOST_SSP", EXIT), _ssp_aligned, note=_CET_NOTE, guard=_exit_loads)

_PERF, _PAT, _EFER, _PKRS = (F.HOST_IA32_PERF_GLOBAL_CTRL, F.HOST_IA32_PAT, F.HOST_IA32_EFER, F.HOST_IA32_PKRS)


def pat_message(x: int) -> str | None:
    for i in range(8):
        t = x >> (8 * i) & 0xFF
        if t not in (0, 1, 4, 5, 6, 7):
            return f"byte {i} (PA{i}) = {t:#x}: each byte must be 0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-)"
    return None


def _pat_ok(x: int) -> bool:
    # each byte in {0,1,4,5,6,7}: bits 7:3 zero and value not 2 or 3
    return not (x & 0xF8F8F8F8F8F8F8F8) and not ((x >> 1) & ~(x >> 2) & 0x0101010101010101)


def _perf(v, k, e):
    if e.exit & C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL and v[_PERF] & k.perf_global_reserved:
        return f"reserved bits of IA32_PERF_GLOBAL_CTRL must be 0 (set: {v[_PERF] & k.perf_global_reserved:#x})"
    return None


def _pat(v, k, e):
    if e.exit & C.VM_EXIT_LOAD_IA32_PAT and not _pat_ok(v[_PAT]):
        return pat_message(v[_PAT])
    return None


def _efer_reserved(v, k, e):
    if e.exit & C.VM_EXIT_LOAD_IA32_EFER and v[_EFER] & k.efer_reserved:
        return f"reserved bits of IA32_EFER must be 0 (set: {v[_EFER] & k.efer_reserved:#x})"
    return None


def _efer_mode(v, k, e):
    if e.exit & C.VM_EXIT_LOAD_IA32_EFER:
        want = 1 if e.exit & C.VM_EXIT_HOST_ADDR_SPACE_SIZE else 0
        x = v[_EFER]
        if (x >> 10 & 1) != want or (x >> 8 & 1) != want:
            return f"LMA (bit 10) and LME (bit 8) must each be {want}, the host address-space size control"
    return None


def _pkrs(v, k, e):
    if e.exit & C.VM_EXIT_LOAD_IA32_PKRS and v[_PKRS] >> 32:
        return "bits 63:32 of IA32_PKRS must be 0"
    return None


_G = {"guard": _exit_loads}
_host("host.perf_global_ctrl.reserved", S_HOST_CR, ("HOST_IA32_PERF_GLOBAL_CTRL", EXIT), _perf, **_G)
_host("host.pat.memory_types", S_HOST_CR, ("HOST_IA32_PAT", EXIT), _pat, **_G)
_host("host.efer.reserved", S_HOST_CR, ("HOST_IA32_EFER", EXIT), _efer_reserved, **_G)
_host("host.efer.lma_lme", S_HOST_CR, ("HOST_IA32_EFER", EXIT), _efer_mode, **_G)
_host("host.pkrs.reserved", S_HOST_CR, ("HOST_IA32_PKRS", EXIT), _pkrs, **_G)


# ---- host segment and descriptor-table registers ------------------------------------------
def _selector_rule(seg: str) -> None:
    name = f"HOST_{seg}_SELECTOR"
    enc = F.by_name(name).encoding

    def fn(v, k, e):
        if v[enc] & 7:
            return "RPL (bits 1:0) and TI (bit 2) must be 0"
        return None
    _host(f"host.{seg.lower()}.selector_rpl_ti", S_HOST_SEG, (name,), fn)


for _seg in ("CS", "SS", "DS", "ES", "FS", "GS", "TR"):
    _selector_rule(_seg)

_CS_SEL, _TR_SEL, _SS_SEL = F.HOST_CS_SELECTOR, F.HOST_TR_SELECTOR, F.HOST_SS_SELECTOR
_HASS = C.VM_EXIT_HOST_ADDR_SPACE_SIZE


def _cs_null(v, k, e):
    return "the CS selector cannot be 0000H" if v[_CS_SEL] == 0 else None


def _tr_null(v, k, e):
    return "the TR selector cannot be 0000H" if v[_TR_SEL] == 0 else None


def _ss_null(v, k, e):
    if not e.exit & _HASS and v[_SS_SEL] == 0:
        return "the SS selector cannot be 0000H when host address-space size is 0"
    return None


_host("host.cs.selector_null", S_HOST_SEG, ("HOST_CS_SELECTOR",), _cs_null)
_host("host.tr.selector_null", S_HOST_SEG, ("HOST_TR_SELECTOR",), _tr_null)
_host("host.ss.selector_null", S_HOST_SEG, ("HOST_SS_SELECTOR", EXIT), _ss_null)
for _reg in ("FS", "GS", "GDTR", "IDTR", "TR"):
    canonical_rule(f"host.{_reg.lower()}.base_canonical", S_HOST_SEG, HOST, f"HOST_{_reg}_BASE")

# ---- address-space size ---------------------------------------------------------------------
_IA32E = C.VM_ENTRY_IA32E_MODE
_RIP, _SSP = F.HOST_RIP, F.HOST_SSP


def _outside_guest(v, k, e):
    if not e.host_lma and e.entry & _IA32E:
        return (ENTRY, e.entry, "IA-32e mode guest (bit 9) must be 0: the processor is outside IA-32e mode "
                                "(IA32_EFER.LMA = 0) at VM entry")
    return None


def _outside_host(v, k, e):
    if not e.host_lma and e.exit & _HASS:
        return (EXIT, e.exit, "host address-space size (bit 9) must be 0: the processor is outside IA-32e mode "
                              "(IA32_EFER.LMA = 0) at VM entry")
    return None


def _inside_host(v, k, e):
    if e.host_lma and not e.exit & _HASS:
        return (EXIT, e.exit, "host address-space size (bit 9) must be 1: the processor is in IA-32e mode "
                              "(IA32_EFER.LMA = 1) at VM entry")
    return None


def _h0_guest(v, k, e):
    if not e.exit & _HASS and e.entry & _IA32E:
        return (ENTRY, e.entry, "IA-32e mode guest (bit 9) must be 0 when host address-space size is 0")
    return None


def _h0_pcide(v, k, e):
    if not e.exit & _HASS and v[_CR4] & R.CR4_PCIDE:
        return ("HOST_CR4", v[_CR4], "CR4.PCIDE (bit 17) must be 0 when host address-space size is 0")
    return None


def _h0_rip(v, k, e):
    if not e.exit & _HASS and v[_RIP] >> 32:
        return ("HOST_RIP", v[_RIP], "bits 63:32 of the RIP field must be 0 when host address-space size is 0")
    return None


def _h1_pae(v, k, e):
    if e.exit & _HASS and not v[_CR4] & R.CR4_PAE:
        return ("HOST_CR4", v[_CR4], "CR4.PAE (bit 5) must be 1 when host address-space size is 1")
    return None


def _h1_rip(v, k, e):
    if e.exit & _HASS:
        x = v[_RIP]
        top = x >> (k.linear_bits - 1)
        if top and top != (1 << (65 - k.linear_bits)) - 1:
            return ("HOST_RIP", x, f"the RIP field must be canonical ({k.linear_bits}-bit) when host address-space size is 1")
    return None


def _ssp(v, k, e):
    if e.exit & _LOAD_CET:
        x = v[_SSP]
        if not e.exit & _HASS:
            if x >> 32:
                return "bits 63:32 of the SSP field must be 0 when host address-space size is 0"
        else:
            top = x >> (k.linear_bits - 1)
            if top and top != (1 << (65 - k.linear_bits)) - 1:
                return f"the SSP field must be canonical ({k.linear_bits}-bit) when host address-space size is 1"
    return None


def _not_64bit(v, e):
    """Guard of the rules that need a processor outside IA-32e mode or a host
    address-space size of 0."""
    return not e.host_lma or not e.exit & _HASS


_N64 = {"guard": _not_64bit}
_host("host.addr_size.ia32e_guest_outside_lma", S_ADDR_SIZE, (ENTRY,), _outside_guest, field=ENTRY, **_N64)
_host("host.addr_size.host_size_outside_lma", S_ADDR_SIZE, (EXIT,), _outside_host, field=EXIT, **_N64)
_host("host.addr_size.host_size_inside_lma", S_ADDR_SIZE, (EXIT,), _inside_host, field=EXIT, **_N64)
_host("host.addr_size.ia32e_guest_needs_host_size", S_ADDR_SIZE, (EXIT, ENTRY), _h0_guest, field=ENTRY, **_N64)
_host("host.addr_size.cr4_pcide", S_ADDR_SIZE, (EXIT, "HOST_CR4"), _h0_pcide, field="HOST_CR4", **_N64)
_host("host.addr_size.rip_upper", S_ADDR_SIZE, (EXIT, "HOST_RIP"), _h0_rip, field="HOST_RIP", **_N64)
_host("host.addr_size.cr4_pae", S_ADDR_SIZE, (EXIT, "HOST_CR4"), _h1_pae, field="HOST_CR4")
_host("host.addr_size.rip_canonical", S_ADDR_SIZE, (EXIT, "HOST_RIP"), _h1_rip, field="HOST_RIP")
_host("host.addr_size.ssp", S_ADDR_SIZE, ("HOST_SSP", EXIT), _ssp,
      note="CET-era SDM text as recalled (SSP bits 63:32 zero without 64-bit host, canonical with it); "
           "no profile shipped supports CET.")
