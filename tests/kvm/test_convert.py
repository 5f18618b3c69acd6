"""Snapshot <-> KVM structures (no /dev/kvm needed).

Access rights are VMCS format (SDM Vol. 3C "Guest Register State"): bits 3:0 type,
4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable.
"""
import pytest

from vmxlab.errors import BadInput
from vmxlab.kvm import abi, convert
from vmxlab.machine import state as S


def seg_bytes(s):
    return (s.type, s.s, s.dpl, s.present, s.avl, s.l, s.db, s.g, s.unusable)


@pytest.mark.parametrize("ar,fields", [
    (0xA09B, (11, 1, 0, 1, 0, 1, 0, 1, 0)),    # 64-bit code, ring 0
    (0xC093, (3, 1, 0, 1, 0, 0, 1, 1, 0)),     # flat data, D/B, G
    (0xA0FB, (11, 1, 3, 1, 0, 1, 0, 1, 0)),    # 64-bit code, ring 3
    (0x008B, (11, 0, 0, 1, 0, 0, 0, 0, 0)),    # busy 64-bit TSS
    (0x10000, (0, 0, 0, 0, 0, 0, 0, 0, 1)),    # unusable
    (0x1093, (3, 1, 0, 1, 1, 0, 0, 0, 0)),     # AVL
])
def test_access_rights_to_kvm_segment(ar, fields):
    s = abi.kvm_segment()
    convert.ar_to_kvm(s, ar)
    assert seg_bytes(s) == fields
    assert convert.ar_from_kvm(s) == ar


def test_every_holdable_access_rights_value_round_trips():
    s = abi.kvm_segment()
    for low in range(256):
        for high in range(32):                      # bits 12..16
            ar = low | (high << 12)
            convert.ar_to_kvm(s, ar)
            assert convert.ar_from_kvm(s) == ar


def test_the_key_groups_cover_the_snapshot_exactly_once():
    groups = (convert.REGS_KEYS, convert.SREGS_KEYS, convert.DEBUGREGS_KEYS, tuple(convert.MSR_KEYS),
              convert.XCR_KEYS, convert.EVENTS_KEYS, convert.MP_KEYS, convert.UNHELD_KEYS)
    flat = [k for g in groups for k in g]
    assert sorted(flat) == sorted(S.KEYS) and len(flat) == len(set(flat))


def test_msr_indices_are_the_architectural_ones():
    # SDM Vol. 4 Table 2-2
    assert convert.MSR_KEYS["GUEST_SYSENTER_CS"] == 0x174 and convert.MSR_KEYS["GUEST_IA32_PAT"] == 0x277
    assert convert.MSR_KEYS["STAR"] == 0xC0000081 and convert.MSR_KEYS["FMASK"] == 0xC0000084
    assert convert.MSR_KEYS["KERNEL_GS_BASE"] == 0xC0000102 and convert.MSR_KEYS["TSC_AUX"] == 0xC0000103


def test_sregs_round_trip_through_the_struct():
    state = {"GUEST_CS_SELECTOR": 0x08, "GUEST_CS_BASE": 0, "GUEST_CS_LIMIT": 0xFFFFFFFF,
             "GUEST_CS_AR_BYTES": 0xA09B, "GUEST_TR_SELECTOR": 0x28, "GUEST_TR_BASE": 0xFFFF800000001000,
             "GUEST_TR_LIMIT": 0x67, "GUEST_TR_AR_BYTES": 0x8B, "GUEST_GDTR_BASE": 0x1000,
             "GUEST_GDTR_LIMIT": 0x37, "GUEST_IDTR_BASE": 0x2000, "GUEST_IDTR_LIMIT": 0xFFF,
             "GUEST_CR0": 0x80050033, "GUEST_CR3": 0x3000, "GUEST_CR4": 0x6A0, "CR2": 0xDEAD000,
             "CR8": 5, "GUEST_IA32_EFER": 0xD01}
    sregs = abi.kvm_sregs()
    convert.sregs_from_state(sregs, state)
    assert (sregs.tr.base, sregs.tr.limit, sregs.tr.selector, sregs.tr.type, sregs.tr.s) == \
        (0xFFFF800000001000, 0x67, 0x28, 11, 0)
    assert (sregs.gdt.base, sregs.gdt.limit, sregs.cr0, sregs.efer, sregs.cr8) == (0x1000, 0x37, 0x80050033, 0xD01, 5)
    out = {}
    convert.sregs_to_state(sregs, out)
    assert {k: out[k] for k in state} == state


def test_interruptibility_maps_onto_vcpu_events():
    ev = abi.kvm_vcpu_events()
    convert.interruptibility_to_events(ev, 0b1011)          # STI, MOV SS, NMI blocking
    assert ev.interrupt.shadow == abi.KVM_X86_SHADOW_INT_STI | abi.KVM_X86_SHADOW_INT_MOV_SS
    assert ev.nmi.masked == 1 and ev.flags & abi.KVM_VCPUEVENT_VALID_SHADOW
    assert convert.interruptibility_from_events(ev) == 0b1011
    convert.interruptibility_to_events(ev, 0)
    assert convert.interruptibility_from_events(ev) == 0


@pytest.mark.parametrize("state,words", [
    ({"GUEST_FOO": 1}, "not a processor-state key"),
    ({"RAX": "1"}, "not an integer"),
    ({"RAX": True}, "not an integer"),
    ({"RAX": -1}, "does not fit in 64 bits"),
    ({"RAX": 1 << 64}, "does not fit in 64 bits"),
    ({"GUEST_CS_SELECTOR": 0x10000}, "does not fit in 16 bits"),
    ({"GUEST_CS_LIMIT": 1 << 32}, "does not fit in 32 bits"),
    ({"GUEST_CS_AR_BYTES": 0x109B}, None),                # AVL: fine
    ({"GUEST_CS_AR_BYTES": 0x19B}, "reserved bits 0x100"),
    ({"GUEST_SS_AR_BYTES": 0x30093}, "reserved bits 0x20000"),
    ({"GUEST_GDTR_LIMIT": 0x10000}, "16 bits of kvm_dtable.limit"),
    ({"GUEST_INTERRUPTIBILITY_INFO": 4}, "blocking by STI, by MOV SS and by NMI"),
    ({"GUEST_ACTIVITY_STATE": 1}, "1 (HLT) cannot be loaded"),
    ({"GUEST_PENDING_DBG_EXCEPTIONS": 0x4000}, "pending debug exceptions"),
    ({"TSC_AUX": 1 << 32}, "bits 63:32"),
    ({"TSC_AUX": 0xFFFFFFFF}, None),
])
def test_check_state(state, words):
    if words is None:
        convert.check_state(state)
        return
    with pytest.raises(BadInput) as e:
        convert.check_state(state)
    msg = str(e.value)
    assert words in msg and "\n" not in msg
    assert next(iter(state)) in msg              # names the key


def test_check_state_wants_a_dict():
    with pytest.raises(BadInput, match="dict"):
        convert.check_state([("RAX", 1)])


def long_mode_sregs():
    s = abi.kvm_sregs()
    s.cr0, s.cr4, s.efer, s.cr3 = 0x80000011, 0x20, 0x500, 0x2000
    s.cs.l = 1
    return s


@pytest.mark.parametrize("change,words", [
    (lambda s: None, None),
    (lambda s: setattr(s, "cr0", 0x80000010), "PG=1 with PE=0"),
    (lambda s: setattr(s, "cr0", 0x20000011 | 0x80000000), "NW=1 with CD=0"),
    (lambda s: setattr(s, "cr0", (1 << 40) | 0x80000011), "bits 63:32"),
    (lambda s: setattr(s, "cr4", 0), "CR4.PAE"),
    (lambda s: setattr(s, "efer", 0x100), "need LMA=1"),
    (lambda s: setattr(s, "cr3", 1 << 62), "physical-address width"),
    (lambda s: (setattr(s, "cr0", 0x11), setattr(s, "efer", 0x500)), "LMA=1 needs LME=1 and CR0.PG=1"),
    (lambda s: (setattr(s, "cr0", 0x11), setattr(s, "efer", 0)), "L=1 outside IA-32e mode"),
])
def test_check_sregs_follows_kvm_is_valid_sregs(change, words):
    s = long_mode_sregs()
    change(s)
    why = convert.check_sregs(s)
    if words is None:
        assert why is None
    else:
        assert why is not None and words in why
