"""VM-entry guest-state loading, VM-exit guest-state saving and host-state loading,
asserted from the SDM's rules (Vol. 3C "Loading Guest State", "Saving Guest State",
"Loading Host State")."""
from vmxlab.arch import controls as C
from vmxlab.arch import fields as F
from vmxlab.machine.state import KEYS
from vmxlab.vmx import transfer as T


def base_state():
    s = {k: 0 for k in KEYS}
    s["GUEST_CR0"] = 0x60000010          # CD, NW, ET (reset value)
    s["GUEST_IA32_EFER"] = 0x1           # SCE
    return s


def test_load_guest_cr0_keeps_et_cd_nw_and_reserved_bits():
    v = {F.GUEST_CR0: 0x80050033 | (1 << 7), F.VM_ENTRY_CONTROLS: C.VM_ENTRY_IA32E_MODE}
    g = T.load_guest(v, base_state())
    # PG, AM, WP, NE, MP, PE from the field; ET, CD, NW kept from before; bit 7 (reserved) kept (0)
    assert g["GUEST_CR0"] == (0x80050023) | 0x60000010


def test_load_guest_efer_without_load_efer_control():
    v = {F.GUEST_CR0: 0x80000031, F.VM_ENTRY_CONTROLS: C.VM_ENTRY_IA32E_MODE}
    g = T.load_guest(v, base_state())
    assert g["GUEST_IA32_EFER"] == 0x1 | 0x400 | 0x100          # SCE kept, LMA and LME from the control
    v[F.VM_ENTRY_CONTROLS] = 0
    s = base_state()
    s["GUEST_IA32_EFER"] = 0x501
    assert T.load_guest(v, s)["GUEST_IA32_EFER"] == 0x1          # LMA, LME cleared (CR0.PG = 1)
    v[F.VM_ENTRY_CONTROLS] = C.VM_ENTRY_LOAD_IA32_EFER
    v[F.GUEST_IA32_EFER] = 0xD01
    assert T.load_guest(v, s)["GUEST_IA32_EFER"] == 0xD01


def test_load_guest_dr7_debugctl_only_with_load_debug_controls():
    s = base_state()
    s["GUEST_DR7"] = 0x455
    v = {F.GUEST_DR7: 0xF000 | 0x1, F.GUEST_IA32_DEBUGCTL: 0x1}
    assert T.load_guest(v, s)["GUEST_DR7"] == 0x455
    v[F.VM_ENTRY_CONTROLS] = C.VM_ENTRY_LOAD_DEBUG_CONTROLS
    g = T.load_guest(v, s)
    assert g["GUEST_DR7"] == 0x2401 and g["GUEST_IA32_DEBUGCTL"] == 1   # 12, 15:14 cleared; 10 set


def test_save_guest_segments_clear_reserved_ar_bits_and_store_lma():
    s = base_state()
    s["GUEST_CS_AR_BYTES"] = 0xA09B | 0xF00      # bits 11:8 must not be saved
    s["GUEST_DS_AR_BYTES"] = 0x1C000
    s["GUEST_IA32_EFER"] = 0x500
    s["GUEST_SYSENTER_CS"] = 0x1_0000_0010
    v = {F.VM_ENTRY_CONTROLS: 0x11FB}
    T.save_guest(s, v, exit_controls=0)
    assert v[F.GUEST_CS_AR_BYTES] == 0xA09B
    assert v[F.GUEST_DS_AR_BYTES] == 0x1C000
    assert v[F.GUEST_SYSENTER_CS] == 0x10
    assert v[F.VM_ENTRY_CONTROLS] == 0x11FB | C.VM_ENTRY_IA32E_MODE
    assert F.GUEST_IA32_EFER not in v and F.GUEST_DR7 not in v        # no save controls


def test_load_host_64_bit():
    v = {F.VM_EXIT_CONTROLS: C.VM_EXIT_HOST_ADDR_SPACE_SIZE, F.HOST_CR0: 0x80050033, F.HOST_CR4: 0x2020,
         F.HOST_CR3: 0xFFF0_0000_0010_1000, F.HOST_CS_SELECTOR: 0x10, F.HOST_SS_SELECTOR: 0,
         F.HOST_DS_SELECTOR: 0x18, F.HOST_TR_SELECTOR: 0x40, F.HOST_FS_BASE: 0x7000,
         F.HOST_TR_BASE: 0xFFFF_8000_0000_3000, F.HOST_GDTR_BASE: 0x1000, F.HOST_IDTR_BASE: 0x2000,
         F.HOST_RIP: 0xFFFF_FFFF_8100_0000, F.HOST_RSP: 0x9000}
    s = base_state()
    s["GUEST_RFLAGS"] = 0x246
    s["GUEST_LDTR_SELECTOR"] = 0x28
    h = T.load_host(v, s, maxphyaddr=39)
    assert h["GUEST_CR0"] == 0x80050023 | 0x60000010           # ET, CD, NW not modified
    assert h["GUEST_CR3"] == 0x101000                          # bits beyond MAXPHYADDR cleared
    assert h["GUEST_CR4"] == 0x2020
    assert h["GUEST_IA32_EFER"] == 0x501                       # LMA, LME = host address-space size
    assert h["GUEST_CS_AR_BYTES"] == 0xA09B and h["GUEST_CS_LIMIT"] == 0xFFFFFFFF
    assert h["GUEST_SS_AR_BYTES"] == 0x10000                   # null selector: unusable
    assert h["GUEST_DS_AR_BYTES"] == 0xC093
    assert h["GUEST_FS_BASE"] == 0x7000
    assert (h["GUEST_TR_BASE"], h["GUEST_TR_LIMIT"], h["GUEST_TR_AR_BYTES"]) == (0xFFFF_8000_0000_3000, 0x67, 0x8B)
    assert (h["GUEST_LDTR_SELECTOR"], h["GUEST_LDTR_AR_BYTES"]) == (0, 0x10000)
    assert (h["GUEST_GDTR_LIMIT"], h["GUEST_IDTR_LIMIT"]) == (0xFFFF, 0xFFFF)
    assert (h["GUEST_RIP"], h["GUEST_RSP"], h["GUEST_RFLAGS"]) == (0xFFFF_FFFF_8100_0000, 0x9000, 0x2)
    assert (h["GUEST_DR7"], h["GUEST_IA32_DEBUGCTL"]) == (0x400, 0)


def test_load_host_32_bit_code_segment():
    v = {F.VM_EXIT_CONTROLS: 0, F.HOST_CS_SELECTOR: 0x8}
    h = T.load_host(v, base_state(), maxphyaddr=36)
    assert h["GUEST_CS_AR_BYTES"] == 0xC09B                   # D/B = 1, L = 0
    assert h["GUEST_IA32_EFER"] & 0x500 == 0
