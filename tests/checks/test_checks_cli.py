"""`vmxlab check`, `vmxlab template`, `vmxlab rules` end to end (in-process main())."""
import io
import json
import sys
from pathlib import Path

import pytest

from vmxlab.cli import main

DUMP = Path(__file__).parent / "data" / "skylake-sti-no-if.dump"


def cli(argv, stdin="", capsys=None, monkeypatch=None):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def vx(capsys, monkeypatch):
    return lambda argv, stdin="": cli(argv, stdin, capsys, monkeypatch)


def _template(vx, *args):
    rc, out, _ = vx(["template", *args])
    assert rc == 0
    return json.loads(out)


def test_template_piped_into_check_succeeds(vx):
    rc, out, _ = vx(["template"])
    assert rc == 0
    rc, out, err = vx(["check", "-"], stdin=out)
    assert rc == 0, out
    assert "VM entry succeeds" in out and err == ""


@pytest.mark.parametrize("mode", ["long", "compat", "protected", "unrestricted-real"])
def test_template_modes(vx, mode):
    doc = _template(vx, "--mode", mode, "--cpu", "icelake-server")
    assert doc["cpu"] == "icelake-server" and doc["format"] == "vmxlab-vmcs/1"
    rc, out, _ = vx(["check", "-"], stdin=json.dumps(doc))
    assert rc == 0, out


def test_guest_rflags_zero(vx):
    doc = _template(vx)
    doc["fields"]["GUEST_RFLAGS"] = 0
    rc, out, _ = vx(["check", "-"], stdin=json.dumps(doc))
    assert rc == 1
    assert "VM-entry failure, exit reason 33 (INVALID_STATE), qualification 0" in out
    assert "guest.rflags.reserved_bit1" in out and "reserved bit 1 must be 1" in out
    assert "Checks on Guest RIP, RFLAGS, and SSP" in out


def test_host_cr4_zero(vx):
    doc = _template(vx)
    doc["fields"]["HOST_CR4"] = "0x0"
    rc, out, _ = vx(["check", "-"], stdin=json.dumps(doc))
    assert rc == 1
    assert "VMfailValid 8 (VMXERR_ENTRY_INVALID_HOST_STATE_FIELD)" in out
    assert "host.cr4.fixed_bits" in out and "VMXE (bit 13) must be 1" in out


def test_pin_based_zero(vx):
    doc = _template(vx)
    doc["fields"]["PIN_BASED_VM_EXEC_CONTROL"] = 0
    rc, out, _ = vx(["check", "-", "--json"], stdin=json.dumps(doc))
    assert rc == 1
    d = json.loads(out)
    assert (d["outcome"], d["error"], d["error_name"]) == ("vmfail_valid", 7, "VMXERR_ENTRY_INVALID_CONTROL_FIELD")
    v = d["violations"][0]
    assert v["rule"] == "ctrl.pin.allowed0" and v["field"] == "PIN_BASED_VM_EXEC_CONTROL" and v["value"] == "0x0"
    assert "bits 1, 2, 4 must be 1" in v["message"]


def test_all_lists_every_violation(vx, tmp_path):
    doc = _template(vx)
    doc["fields"].update({"PIN_BASED_VM_EXEC_CONTROL": 0, "HOST_CR4": 0, "GUEST_RFLAGS": 0})
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    rc, out, _ = vx(["check", str(f), "--all"])
    assert rc == 1
    assert out.index("ctrl.pin.allowed0") < out.index("host.cr4.fixed_bits") < out.index("guest.rflags.reserved_bit1")
    assert out.splitlines()[1] == "VMfailValid 7 (VMXERR_ENTRY_INVALID_CONTROL_FIELD)"


def test_vmresume_and_host_mode(vx):
    rc, out, _ = vx(["template"])
    rc2, out2, _ = vx(["check", "-", "--instruction", "vmresume"], stdin=out)
    assert rc2 == 1 and "VMfailValid 5" in out2
    rc3, out3, _ = vx(["check", "-", "--host-mode", "32bit"], stdin=out)
    assert rc3 == 1 and "VMfailValid 8" in out3 and "host.addr_size.ia32e_guest_outside_lma" in out3


def test_cpu_from_document_and_option(vx):
    doc = _template(vx, "--cpu", "penryn")
    assert doc["cpu"] == "penryn"
    rc, out, _ = vx(["check", "-"], stdin=json.dumps(doc))
    assert rc == 0 and "on penryn" in out
    # the same VMCS on a processor with TRUE controls but Skylake's fixed bits passes too;
    # --cpu overrides the document's cpu
    rc, out, _ = vx(["check", "-", "--cpu", "skylake-client"], stdin=json.dumps(doc))
    assert "on skylake-client" in out


def test_dump_input(vx):
    rc, out, _ = vx(["check", str(DUMP), "--cpu", "skylake-client"])
    assert rc == 1
    assert "guest.interruptibility.sti_needs_if" in out
    assert "not checked" in out and "ctrl.cr3_target_count" in out


@pytest.mark.parametrize("argv, stdin, needle", [
    (["check", "-"], "{", "not valid JSON"),
    (["check", "-"], '{"fields": {"NO_SUCH_FIELD": 1}}', "NO_SUCH_FIELD"),
    (["check", "-"], '{"fields": {"GUEST_ES_SELECTOR": "0x10000"}}', "GUEST_ES_SELECTOR"),
    (["check", "/no/such/file.json"], "", "/no/such/file.json"),
    (["check", "-", "--cpu", "no-such-cpu"], "{}", "no-such-cpu"),
    (["template", "--cpu", "penryn", "--mode", "unrestricted-real"], "", "unrestricted"),
])
def test_bad_input_one_line_exit_2(vx, argv, stdin, needle):
    rc, out, err = vx(argv, stdin=stdin)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_rules_catalogue(vx):
    rc, out, _ = vx(["rules"])
    assert rc == 0
    from vmxlab.checks import RULES
    lines = out.splitlines()
    assert lines[-1] == f"{len(RULES)} rules"
    for r in RULES:
        assert any(line.startswith(r.id + " ") and r.section in line for line in lines), r.id
