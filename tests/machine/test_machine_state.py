"""get_state / set_state in the state.py shape (VMCS guest-state names + extras)."""
import mhelpers as H

from vmxlab.machine import StopReason
from vmxlab.machine.state import KEYS


def test_snapshot_has_every_key():
    e = H.Env()
    assert set(e.m.get_state()) == set(KEYS)


def test_round_trip_of_a_full_snapshot():
    e = H.Env()
    s = e.m.get_state()
    s.update({
        "RAX": 0x1111, "R15": 0xFFFF_0000_1234, "GUEST_RSP": 0x7F000, "GUEST_RIP": 0x40010,
        "GUEST_RFLAGS": 0x202 | (1 << 11), "CR2": 0xDEAD000, "GUEST_CR4": 0x620 | (1 << 18),
        "DR0": 0x1000, "DR3": 0x4000, "GUEST_DR7": 0x401, "CR8": 5, "XCR0": 3,
        "GUEST_FS_BASE": 0x7F12_3456_7000, "GUEST_GS_BASE": 0xFFFF_8000_0000_1000,
        "GUEST_ES_SELECTOR": 0, "GUEST_ES_BASE": 0, "GUEST_ES_LIMIT": 0, "GUEST_ES_AR_BYTES": 0x10000,
        "GUEST_LDTR_SELECTOR": 0x48, "GUEST_LDTR_BASE": 0x5000, "GUEST_LDTR_LIMIT": 0x2F,
        "GUEST_LDTR_AR_BYTES": 0x82,
        "GUEST_GDTR_LIMIT": 0x7F, "GUEST_IDTR_BASE": 0x2800,
        "GUEST_INTERRUPTIBILITY_INFO": 1 | 8,               # blocking by STI and by NMI
        "GUEST_SYSENTER_CS": 0x10, "GUEST_SYSENTER_ESP": 0x1234000, "GUEST_SYSENTER_EIP": 0x40000,
        "GUEST_IA32_PAT": 0x0007040600070106, "GUEST_IA32_DEBUGCTL": 1,
        "KERNEL_GS_BASE": 0xABC000, "STAR": 0x0023_0008_0000_0000, "LSTAR": 0x41000, "FMASK": 0x700,
        "TSC_AUX": 3,
    })
    e.m.set_state(s)
    got = e.m.get_state()
    assert {k: v for k, v in got.items() if got[k] != s[k]} == {}


def test_ring3_state_makes_privileged_instructions_fault():
    e = H.Env()
    e.handler(13, "pop r8; mov r9, [rsp]; hlt")
    a = e.code("fault: mov rax, cr0; cli; hlt")
    e.user_mode()
    assert e.m.cpl() == 3
    e.m.run(time_budget=2)
    assert e.reg("R9") == a.labels["fault"] and e.reg("R8") == 0


def test_compatibility_mode_code_segment_from_state():
    e = H.Env()
    s = e.m.get_state()
    s["GUEST_CS_SELECTOR"], s["GUEST_CS_AR_BYTES"] = 0x18, 0xC09B     # 32-bit code, D = 1, L = 0
    e.m.set_state(s)
    e.m.load(H.CODE, bytes.fromhex("b811111111" "48" "f4"))   # mov eax, ...; dec eax (0x48 in 32-bit); hlt
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert e.reg("RAX") == 0x11111110


def test_set_state_accepts_a_subset():
    e = H.Env()
    before = e.m.get_state()
    e.m.set_state({"RAX": 0x1234, "GUEST_RIP": 0x40100})
    after = e.m.get_state()
    assert after["RAX"] == 0x1234 and after["GUEST_RIP"] == 0x40100
    assert {k for k in after if after[k] != before[k]} == {"RAX", "GUEST_RIP"}
    import pytest
    with pytest.raises(KeyError):
        e.m.set_state({"NOT_A_REGISTER": 1})
