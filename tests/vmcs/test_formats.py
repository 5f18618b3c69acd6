"""vmxlab JSON and Linux dump_vmcs text, in and out."""
import json
from pathlib import Path

import pytest

from vmxlab.arch import fields as F
from vmxlab.errors import BadInput
from vmxlab.vmcs import UnknownField, Vmcs, dumpfmt, jsonfmt, load
from vmxlab.vmcs.diff import diff, format_diff
from vmxlab.vmcs.document import VmcsDocument

DUMP = (Path(__file__).parent.parent / "data" / "dump_vmcs_invalid_guest.txt").read_text()


def test_dump_vmcs_fields():
    doc = load(DUMP, "dump.txt")
    v = doc.vmcs
    assert doc.source == "dump_vmcs"
    assert v["GUEST_CR0"] == 0x80050033
    assert v["CR4_READ_SHADOW"] == 0x3706E0
    assert v["CR4_GUEST_HOST_MASK"] == 0xFFFFFFFFFFFEF871
    assert v["GUEST_RIP"] == 0xFFFFFFFF81079E29
    assert v["GUEST_RFLAGS"] == 0x46
    assert v["GUEST_SYSENTER_CS"] == 0x10
    assert (v["GUEST_CS_SELECTOR"], v["GUEST_CS_AR_BYTES"], v["GUEST_CS_LIMIT"]) == (0x10, 0xA09B, 0xFFFFFFFF)
    assert v["GUEST_DS_AR_BYTES"] == 0x1C000
    assert v["GUEST_GS_BASE"] == 0xFFFF88846FB80000
    assert (v["GUEST_GDTR_LIMIT"], v["GUEST_IDTR_BASE"]) == (0x7F, 0xFFFFFE0000000000)
    assert v["GUEST_TR_AR_BYTES"] == 0x8B
    assert v["GUEST_IA32_EFER"] == 0xD01
    assert v["GUEST_IA32_PAT"] == 0x0407050600070106
    assert v["HOST_RIP"] == 0xFFFFFFFFC0A0C1A0
    assert v["HOST_TR_SELECTOR"] == 0x40
    assert v["HOST_CR3"] == 0x10B6A0002
    assert v["HOST_IA32_SYSENTER_CS"] == 0x10
    assert v["CPU_BASED_VM_EXEC_CONTROL"] == 0xB5A06DFA
    assert v["VM_ENTRY_CONTROLS"] == 0xD3FF
    assert v["VM_EXIT_REASON"] == 0x80000021
    assert v["TSC_OFFSET"] == 0xFFFFFFFC1A5BB3D0
    assert v["GUEST_INTR_STATUS"] == 0
    assert v["APIC_ACCESS_ADDR"] == 0x11B7A3000
    assert v["POSTED_INTR_NV"] == 0xF2
    assert v["EPT_POINTER"] == 0x10F5D405E
    assert (v["PLE_GAP"], v["PLE_WINDOW"]) == (0x80, 0x1000)
    assert v["VIRTUAL_PROCESSOR_ID"] == 1
    assert any("guest autoload" in n for n in doc.notes)


def test_dump_vmcs_unprinted_fields_stay_unknown():
    v = load(DUMP).vmcs
    for name in ("VMCS_LINK_POINTER", "IO_BITMAP_A", "MSR_BITMAP", "CR3_TARGET_COUNT",
                 "VM_ENTRY_MSR_LOAD_COUNT", "GUEST_SMBASE", "HOST_IA32_PERF_GLOBAL_CTRL"):
        with pytest.raises(UnknownField):
            v[name]
        assert v.get(name) is None


def test_dump_vmcs_round_trip():
    v = load(DUMP).vmcs
    text = dumpfmt.dumps(v)
    again = load(text).vmcs
    assert diff(v, again, include_unknown=True) == []


def test_dump_vmcs_bad_line_is_reported_with_number():
    lines = DUMP.splitlines()
    lines[8] = "[ 4711.802129] kvm_intel: RFLAGS=zz"
    with pytest.raises(BadInput, match=r"dump\.txt:9: cannot read"):
        load("\n".join(lines), "dump.txt")


def test_dump_vmcs_old_kernel_layout():
    text = "\n".join([
        "*** Guest State ***",
        "EFER =     0x0000000000000500  PAT = 0x0007040600070406",
        "*** Control State ***",
        "PinBased=0000003f CPUBased=96a1e9fe SecondaryExec=000000ea",
        "EntryControls=0000d1ff ExitControls=0023efff",
    ])
    v = load(text).vmcs
    assert v["GUEST_IA32_EFER"] == 0x500 and v["GUEST_IA32_PAT"] == 0x0007040600070406
    assert v["PIN_BASED_VM_EXEC_CONTROL"] == 0x3F and v["SECONDARY_VM_EXEC_CONTROL"] == 0xEA
    assert v["VM_EXIT_CONTROLS"] == 0x23EFFF


def test_text_that_is_no_dump():
    with pytest.raises(BadInput, match="neither vmxlab JSON nor a dump_vmcs"):
        load("hello\nworld\n", "x.txt")


def test_json_round_trip():
    v = Vmcs()
    v["GUEST_CR0"] = 0x80050033
    v["VMCS_LINK_POINTER"] = -1
    v["PIN_BASED_VM_EXEC_CONTROL"] = 22
    doc = VmcsDocument(v, cpu="skylake-client", memory={0x5000: b"\x00\x11\x22\x33"})
    text = jsonfmt.dumps(doc)
    data = json.loads(text)
    assert data["fields"]["VMCS_LINK_POINTER"] == "0xffffffffffffffff"
    back = load(text, "t.json")
    assert back.vmcs == v and back.cpu == "skylake-client"
    assert back.read_memory(0x5001, 2) == b"\x11\x22"
    assert back.read_memory(0x5002, 4) is None
    assert back.vmcs["GUEST_RIP"] == 0        # absent fields read as 0 in JSON documents


@pytest.mark.parametrize("doc,message", [
    ('{"fields": {"GUEST_FOO": 1}}', "unknown VMCS field 'GUEST_FOO'"),
    ('{"fields": {"GUEST_CS_SELECTOR": "0x10000"}}', "wider than the 16-bit field"),
    ('{"fields": {"GUEST_CR0": "zz"}}', "is not an integer"),
    ('{"fields": {"GUEST_CR0": true}}', "is not an integer"),
    ('{"format": "other/2"}', "is not vmxlab-vmcs/1"),
    ('{"launch_state": "running"}', "launch_state"),
    ('{"memory": [{"address": "0x10", "hex": "xyz"}]}', "memory\\[0\\].hex"),
    ('{"memory": {}}', "'memory' is a list"),
    ('{"fieldz": {}}', "unknown key 'fieldz'"),
    ('[1, 2]', "a VMCS document is a JSON object"),
    ('{"fields": ', "not valid JSON"),
])
def test_json_bad_input(doc, message):
    with pytest.raises(BadInput, match=message):
        load(doc, "bad.json")


def test_diff():
    a, b = Vmcs(), Vmcs()
    a["GUEST_RIP"] = 1
    b["GUEST_RIP"] = 2
    b["HOST_CR4"] = 0x2000
    d = diff(a, b)
    assert [(x.field.name, x.a, x.b) for x in d] == [("GUEST_RIP", 1, 2), ("HOST_CR4", 0, 0x2000)]
    assert format_diff(d, ("a", "b")).splitlines()[0] == "GUEST_RIP  a=0x1  b=0x2"
